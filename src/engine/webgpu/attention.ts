import type { AttentionMask, AttentionShape, EngineAttention, IntTensor, Tensor } from '../types.js';
import { grid, type GpuBinding, type GpuContext, type UniformWord } from './gpu.js';

/**
 * Blockwise attention on WebGPU: the EngineAttention of the webgpu engine.
 * Layouts and the mask rule as in src/kernels/types.ts; every kernel works
 * on slices of engine buffers (the binding windows of gpu.ts).
 *
 * Kernels, all recorded in order with the engine's other ops:
 *   reset      o = 0, lse = -Infinity (the bit pattern, written from a uniform)
 *   pack       copies qPos, kvPos (and qSeg, kvSeg, else zeros) into one
 *              scratch buffer and adds per-tile [min pos, max pos, min seg,
 *              max seg]: the attention kernels then need one mask binding,
 *              and skip a (query tile, KV tile) pair whose ranges prove that
 *              nothing in it is allowed (exact: causal with every key after
 *              every query, or disjoint document ranges)
 *   forward    one workgroup per (query tile, head): the Q tile in workgroup
 *              memory, K then V tiles streamed through one buffer, online
 *              softmax in fp32 (base 2), then the block's normalised result
 *              merged into the running (o, lse) in the buffers through the lse
 *   delta      delta[h, i] = dO[i, h, :] . o[i, h, :], one thread per row
 *   backward   two deterministic kernels, no atomics:
 *                dkdv: one workgroup per (KV tile, KV head), K and V tiles
 *                      resident, looping over the query heads of its group
 *                      and the query tiles; dK, dV in registers, added into
 *                      the buffers at the end
 *                dq:   one workgroup per (query tile, head), Q and dO
 *                      resident, looping over the KV tiles; dQ in registers
 *
 * Thread layout (every kernel): R x TS threads, R the tile's resident rows,
 * TS threads per row (256 / R, at most 32, at most headDim / 4). Rows live in
 * workgroup memory as vec4 chunks, zero-padded to DP4 = DC4 * TS chunks, with
 * a stride of DP4 + 1 chunks so that threads reading different rows at one
 * chunk hit different banks. A thread computes the scores of its row against
 * streamed rows c, c + TS, ... (register-blocked: one pass over the chunks
 * for all of them), and accumulates chunks c, c + TS, ... of its output row:
 * DC4 vec4 registers. Register arrays are unrolled into scalars by the
 * generator (no indexed private arrays).
 *
 * Tile sizes are chosen per head dimension to fit the device's
 * maxComputeWorkgroupStorageSize (32 KiB on lavapipe and most GPUs) and
 * baked into the WGSL with the head dimension (one pipeline per distinct set,
 * named by its key). Masked scores never become infinities inside a shader
 * (WGSL leaves their arithmetic undefined): a finite sentinel stands for
 * -Infinity and is tested explicitly. The WGSL is also written for
 * llvmpipe's compile time (the test machines' GPU): loop bounds the compiler
 * cannot fold (`u.zero`), few memory-access sites, masks by `select`.
 */

export interface WebGPUAttentionOptions {
  /** Caps the workgroup memory the tile plans use (bytes); default the device's limit. Tests use it to force small tiles. */
  workgroupStorage?: number;
}

/** One kernel's geometry: R resident rows of TS threads each, vec4 chunks of the head dimension. */
export interface Geometry {
  /** Resident rows (the workgroup's) and streamed rows (a tile looped over). */
  rows: number;
  streamed: number;
  threadsPerRow: number;
  threads: number;
  /** vec4 chunks of a row (ceil(headDim / 4)), chunks per thread, padded chunks per row. */
  d4: number;
  dc4: number;
  dp4: number;
  /** Workgroup memory, bytes. */
  bytes: number;
}

export interface ForwardPlan {
  headDim: number;
  /** Query rows per workgroup, KV rows per streamed tile. */
  tileQ: number;
  tileKV: number;
  forward: Geometry;
}

export interface BackwardPlan {
  headDim: number;
  /** Query rows and KV rows per tile, in both backward kernels. */
  tileQ: number;
  tileKV: number;
  /** KV rows resident, query tiles streamed. */
  dkdv: Geometry;
  /** Query rows resident, KV tiles streamed. */
  dq: Geometry;
}

const LOG2E = 1.4426950408889634;
const NEG_INF_BITS = 0xff800000;
/** Candidate (tileQ, tileKV) pairs, in order of preference. */
const TILES: ReadonlyArray<readonly [number, number]> = [
  [64, 64],
  [64, 32],
  [32, 64],
  [32, 32],
  [32, 16],
  [16, 32],
  [16, 16],
  [16, 8],
  [8, 16],
  [8, 8],
  [8, 4],
  [4, 8],
  [4, 4],
];

const ceilDiv = (a: number, b: number): number => Math.ceil(a / b);
/** Scores a thread holds at once (registers; each is an unrolled copy in the WGSL). */
const MAX_SCORES = 4;

/**
 * The geometry of a kernel with `rows` resident rows and `streamed` rows a
 * tile; `bytes(kS4)` is its workgroup memory given the row stride in chunks.
 */
function geometry(D: number, rows: number, streamed: number, bytes: (ks4: number) => number): Geometry {
  const d4 = ceilDiv(D, 4);
  const threadsPerRow = Math.max(1, Math.min(Math.floor(256 / rows), 32, d4));
  const dc4 = ceilDiv(d4, threadsPerRow);
  const dp4 = dc4 * threadsPerRow;
  return { rows, streamed, threadsPerRow, threads: rows * threadsPerRow, d4, dc4, dp4, bytes: bytes(dp4 + 1) };
}

export function planForward(headDim: number, storageBytes: number): ForwardPlan {
  for (const [BQ, BK] of TILES) {
    const g = geometry(headDim, BQ, BK, (ks4) => 16 * (BQ + BK) * ks4 + 4 * BQ * BK + 8 * BK + 8);
    if (4 * g.dc4 > 32 || ceilDiv(BK, g.threadsPerRow) > MAX_SCORES) continue;
    if (g.bytes <= storageBytes) return { headDim, tileQ: BQ, tileKV: BK, forward: g };
  }
  throw new RangeError(`webgpu attention: headDim ${headDim} does not fit ${storageBytes} bytes of workgroup memory`);
}

export function planBackward(headDim: number, storageBytes: number): BackwardPlan {
  for (const [BQ, BK] of TILES) {
    const dkdv = geometry(headDim, BK, BQ, (ks4) => 32 * (BK + BQ) * ks4 + 8 * BQ * BK + 16 * BQ + 8);
    const dq = geometry(headDim, BQ, BK, (ks4) => 32 * (BQ + BK) * ks4 + 4 * BQ * BK + 8 * BK + 8);
    if (4 * dkdv.dc4 > 16 || 4 * dq.dc4 > 32 || ceilDiv(BQ, dkdv.threadsPerRow) > MAX_SCORES || ceilDiv(BK, dq.threadsPerRow) > MAX_SCORES) continue;
    if (dkdv.bytes <= storageBytes && dq.bytes <= storageBytes) return { headDim, tileQ: BQ, tileKV: BK, dkdv, dq };
  }
  throw new RangeError(`webgpu attention: headDim ${headDim} does not fit ${storageBytes} bytes of workgroup memory (backward)`);
}

// ---------------------------------------------------------------------------
// WGSL generation.

type Elem = 'f32' | 'i32';
type FieldType = 'u32' | 'f32';

/**
 * A kernel before its bindings are known: the tensors it reads and writes
 * (each accessed in the body as `name[u.b_name + i]`), its own uniform
 * fields, and the WGSL after the declarations.
 */
interface Kernel {
  key: string;
  tensors: ReadonlyArray<readonly [string, Elem]>;
  fields: ReadonlyArray<readonly [string, FieldType]>;
  body: string;
}

function kernel(key: string, tensors: ReadonlyArray<readonly [string, Elem]>, fields: ReadonlyArray<readonly [string, FieldType]>, body: string): Kernel {
  return { key, tensors, fields, body };
}

/**
 * The WGSL of a kernel whose tensors go to binding slots `slots` (tensor i in
 * slot slots[i], several tensors sharing a slot when their windows overlap in
 * one buffer). U starts with one u32 per slot (gpu.ts fills them; unused
 * here), then b_<tensor>: each tensor's first element in its slot's window,
 * then the kernel's fields. A slot's array is named after its first tensor;
 * the other tensors of the slot are renamed to it in the body.
 */
function wgslOf(k: Kernel, slots: number[]): string {
  const reps = [...new Set(slots)];
  const members = [
    ...reps.map((_, i) => `  w${i}: u32,`),
    ...k.tensors.map(([n]) => `  b_${n}: u32,`),
    ...k.fields.map(([n, t]) => `  ${n}: ${t},`),
  ].join('\n');
  const decls = reps
    .map((r, i) => `@group(0) @binding(${i + 1}) var<storage, read_write> ${k.tensors[r][0]}: array<${k.tensors[r][1]}>;`)
    .join('\n');
  let body = k.body;
  k.tensors.forEach(([n], i) => {
    if (slots[i] !== i) body = body.replace(new RegExp(`\\b${n}\\[`, 'g'), `${k.tensors[slots[i]][0]}[`);
  });
  return `struct U {\n${members}\n}\n@group(0) @binding(0) var<uniform> u: U;\n${decls}\n${body}`;
}

/** The fields every attention kernel shares (mask scratch offsets included). */
const ATTN_FIELDS: ReadonlyArray<readonly [string, FieldType]> = [
  ['qLen', 'u32'],
  ['kvLen', 'u32'],
  ['heads', 'u32'],
  ['kvHeads', 'u32'],
  ['group', 'u32'],
  ['nQt', 'u32'],
  ['nKt', 'u32'],
  ['total', 'u32'],
  ['causal', 'u32'],
  ['window', 'u32'],
  ['scale', 'f32'],
  ['scale2', 'f32'],
  ['oQP', 'u32'],
  ['oQS', 'u32'],
  ['oKP', 'u32'],
  ['oKS', 'u32'],
  ['oQM', 'u32'],
  ['oKM', 'u32'],
  // A runtime 0 added to loop bounds, so that compilers do not unroll them
  // fully: llvmpipe's compile time grows about tenfold with full unrolling,
  // and a GPU loses little on loops whose bodies are vec4 work.
  ['zero', 'u32'],
];

const COMMON = `
const NEG: f32 = -1.0e30;
const LN2: f32 = 0.6931471805599453;
const LOG2E: f32 = 1.4426950408889634;
// lse of a row that has seen no key: -Infinity in the buffer (or any huge negative).
fn isEmpty(x: f32) -> bool { return x < -1.0e29 || bitcast<u32>(x) == 0xff800000u; }
// True when the ranges of the tile pair prove no (query, key) in it is allowed.
fn skipTile(qt: u32, kt: u32) -> u32 {
  let qm = u.b_mk + u.oQM + 4u * qt;
  let km = u.b_mk + u.oKM + 4u * kt;
  if (u.causal != 0u && mk[km] > mk[qm + 1u]) { return 1u; }
  if (mk[km + 3u] < mk[qm + 2u] || mk[km + 2u] > mk[qm + 3u]) { return 1u; }
  let w = i32(u.window);
  if (w != 0 && (mk[qm] - mk[km + 1u] >= w || (u.causal == 0u && mk[km] - mk[qm + 1u] >= w))) { return 1u; }
  return 0u;
}
`;

/** n statements, the i-th from f(i): register arrays unrolled into scalars. */
function unroll(n: number, f: (i: number) => string, sep = '\n'): string {
  return Array.from({ length: n }, (_, i) => f(i)).join(sep);
}

function consts(c: Record<string, number>): string {
  return Object.entries(c)
    .map(([k, v]) => `const ${k}: u32 = ${v}u;`)
    .join('\n');
}

function geometryConsts(D: number, g: Geometry, extra: Record<string, number>): string {
  return consts({ D, D4: g.d4, DP4: g.dp4, KS4: g.dp4 + 1, TS: g.threadsPerRow, DC4: g.dc4, NT: g.threads, ...extra });
}

/**
 * Rows [first, first + rows) of one head of a token-major tensor into a
 * workgroup array of vec4 rows (stride KS4 chunks), zero past the tensor's
 * rows and past headDim.
 */
function loadTile(D: number, dst: string, rows: string, src: string, first: string, len: string, nHeads: string, head: string): string {
  const x = (i: number) => (i === 0 ? `${src}[b]` : `${src}[b + ${i}u]`);
  const value =
    D % 4 === 0
      ? `vec4<f32>(${unroll(4, x, ', ')})`
      : `vec4<f32>(${unroll(4, (i) => (i === 0 ? x(0) : `select(0.0, ${x(i)}, 4u * d4 + ${i}u < D)`), ', ')})`;
  return `for (var e = lid; e < ${rows} * DP4; e += NT) {
    let rr = e / DP4;
    let d4 = e % DP4;
    let gr = ${first} + rr;
    var x = vec4<f32>(0.0);
    if (gr < ${len} && d4 < D4) {
      let b = u.b_${src} + (gr * ${nHeads} + ${head}) * D + 4u * d4;
      x = ${value};
    }
    ${dst}[rr * KS4 + d4] = x;
  }`;
}

/** Stores (or adds) vec4 `value` at row base `base`, chunk `chunk`, of tensor `dst`: the elements below headDim. */
function storeChunk(D: number, dst: string, base: string, chunk: string, value: string, op: '=' | '+='): string {
  const comp = 'xyzw';
  return `if (${chunk} < D4) {
      let b = ${base} + 4u * (${chunk});
      let y = ${value};
      ${unroll(4, (i) => {
        const st = `${dst}[b + ${i}u] ${op} y.${comp[i]};`;
        return D % 4 === 0 || i === 0 ? st : `if (4u * (${chunk}) + ${i}u < D) { ${st} }`;
      }, '\n      ')}
    }`;
}

/**
 * The two sides of a (query tile, KV tile) pair as the attention kernels name
 * them: the tile's head and index, its first row, its rows (a WGSL const), its
 * length, the heads of its tensors, and, for a side that is resident, the
 * thread's row in the tile, that row's index in the tensor and whether it
 * exists. KV heads are g = h / group for query head h (grouped-query attention).
 */
interface Side {
  head: string;
  tile: string;
  first: string;
  rows: string;
  len: string;
  heads: string;
  row: string;
  global: string;
  ok: string;
  /** The mask scratch fields of its positions and document ids. */
  pos: string;
  seg: string;
}

const Q_SIDE: Side = { head: 'h', tile: 'qt', first: 'i0', rows: 'BQ', len: 'u.qLen', heads: 'u.heads', row: 'ir', global: 'gi', ok: 'rowOk', pos: 'oQP', seg: 'oQS' };
const KV_SIDE: Side = { head: 'g', tile: 'kt', first: 'j0', rows: 'BK', len: 'u.kvLen', heads: 'u.kvHeads', row: 'jr', global: 'gj', ok: 'keyOk', pos: 'oKP', seg: 'oKS' };

/** loadTile for the current tile of a side (rows side.first.., head side.head). */
function loadSide(D: number, dst: string, src: string, s: Side): string {
  return loadTile(D, dst, s.rows, src, s.first, s.len, s.heads, s.head);
}

/** Element i of the mask scratch field `field` (oQP, oQS, oKP, oKS: positions and document ids). */
function maskAt(field: string, i: string): string {
  return `mk[u.b_mk + u.${field} + ${i}]`;
}

/** Row i of query head h in a per-(head, query) tensor (lse, delta: [heads, qLen]). */
function rowStat(name: string, i: string): string {
  return `${name}[u.b_${name} + h * u.qLen + ${i}]`;
}

/** Sets `dst` to the lse of query row i in base 2, leaving it alone (NEG) for a row that has seen no key. */
function loadLse2(dst: string, i: string, ind: string): string {
  return `let x = ${rowStat('lse', i)};${ind}if (!isEmpty(x)) { ${dst} = x * LOG2E; }`;
}

/**
 * The WGSL after the declarations of a forward or backward kernel up to its
 * own code: the geometry consts, COMMON, the workgroup arrays (name, element
 * type, length) and sSkip, then main, which decodes wid (tile-major over the
 * heads of the resident side) into the resident tile, its head and this
 * thread's row and first chunk c. Workgroups past u.total are the padding of
 * a 2-D grid.
 */
function attnPrologue(D: number, g: Geometry, extra: Record<string, number>, arrays: ReadonlyArray<readonly [string, string, number]>, s: Side): string {
  return `
${geometryConsts(D, g, extra)}
${COMMON}
${arrays.map(([n, t, len]) => `var<workgroup> ${n}: array<${t}, ${len}>;`).join('\n')}
var<workgroup> sSkip: array<u32, 2>;

@compute @workgroup_size(${g.threads})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let wid = wg.x + wg.y * nwg.x;
  if (wid >= u.total) { return; }
  let ${s.head} = wid % ${s.heads};
  let ${s.tile} = wid / ${s.heads};${s === Q_SIDE ? '\n  let g = h / u.group;' : ''}
  let ${s.first} = ${s.tile} * ${s.rows};
  let ${s.row} = lid / TS;
  let c = lid % TS;
  let ${s.global} = ${s.first} + ${s.row};
  let ${s.ok} = ${s.global} < ${s.len};`;
}

/**
 * The position and document id of this thread's resident row (qpos, qseg or
 * kpos, kseg; 0 past the tensor), after the declarations `vars`, loaded with
 * `loads` under the same test.
 */
function residentMask(s: Side, vars: string[], loads: string[]): string {
  const [pos, seg] = s === Q_SIDE ? ['qpos', 'qseg'] : ['kpos', 'kseg'];
  return [
    `var ${pos}: i32 = 0;`,
    `var ${seg}: i32 = 0;`,
    ...vars,
    `if (${s.ok}) {`,
    `  ${pos} = ${maskAt(s.pos, s.global)};`,
    `  ${seg} = ${maskAt(s.seg, s.global)};`,
    ...loads.map((l) => `  ${l}`),
    '}',
  ].join('\n  ');
}

/**
 * Skips the pair (qt, kt) when skipTile proves it empty (a `continue`). lid 0
 * computes the flag and workgroupUniformLoad makes it uniform; the flag
 * alternates between two slots because the load's barrier comes before the
 * load, so lid 0 may write the next pair's flag while a thread still reads
 * this one.
 */
function skipPair(slot: string): string {
  return `if (lid == 0u) { sSkip[${slot}] = skipTile(qt, kt); }
    if (workgroupUniformLoad(&sSkip[${slot}]) != 0u) { continue; }`;
}

/** Chunk k of this thread (c + TS * k). */
function chunkOf(TS: number, k: number): string {
  return `c + ${TS * k}u`;
}

/** Whether streamed row t of this thread (c + TS * t) lies in a tile of `rows` rows. */
function inTile(TS: number, t: number, rows: string): string {
  return `${chunkOf(TS, t)} < ${rows}`;
}

/** This thread's streamed rows `name`0.. (c + TS * t, clamped into the tile so that reads stay in it; inTile tells the real ones). */
function streamedRows(n: number, TS: number, name: string, rows: string): string {
  return unroll(n, (t) => `let ${name}${t} = min(${chunkOf(TS, t)}, ${rows} - 1u);`, '\n  ');
}

/** vec4 accumulators `name`k (k < dc4) set to zero, the names interleaved per chunk. */
function zeroAccs(dc4: number, names: string[]): string {
  return unroll(dc4, (k) => names.map((n) => `var ${n}${k} = vec4<f32>(0.0);`).join('\n  '), '\n  ');
}

/**
 * Register-blocked dot products over the chunks of the head dimension, one
 * pass: for each [acc, local, resident, streamed], acc_t = resident row `row`
 * . streamed row `idx`_t for t < n (the accumulators declared here at 0).
 */
function dotRows(n: number, idx: string, row: string, pairs: ReadonlyArray<readonly [string, string, string, string]>, ind: string): string {
  const ind2 = ind + '  ';
  return `${unroll(n, (t) => pairs.map(([a]) => `var ${a}${t}: f32 = 0.0;`).join(ind), ind)}
${ind.slice(1)}for (var d4 = 0u; d4 < D4 + u.zero; d4 += 1u) {${pairs.map(([, l, r]) => `${ind2}let ${l} = ${r}[${row} * KS4 + d4];`).join('')}
${ind2.slice(1)}${unroll(n, (t) => pairs.map(([a, l, , st]) => `${a}${t} += dot(${l}, ${st}[${idx}${t} * KS4 + d4]);`).join(ind2), ind2)}
${ind.slice(1)}}`;
}

/** The mask rule (src/kernels/types.ts) for a key at kp in document ks against a query at qp in document qs. */
function allowed(kp: string, qp: string, ks: string, qs: string): string {
  const near = `((${qp}) - (${kp}) < i32(u.window)) & ((u.causal != 0u) | ((${kp}) - (${qp}) < i32(u.window)))`;
  return `((u.causal == 0u) | (${kp} <= ${qp})) & (${ks} == ${qs}) & ((u.window == 0u) | (${near}))`;
}

/** `live` for streamed key kr`t` of a query-resident kernel: in the tile, `rowCond`, below kvLen, allowed for this row. */
function keyLive(TS: number, t: number, rowCond: string): string {
  return `let live = (${inTile(TS, t, 'BK')}) & ${rowCond} & (j0 + kr${t} < u.kvLen) & ${allowed(`sKP[kr${t}]`, 'qpos', `sKG[kr${t}]`, 'qseg')};`;
}

/** Backward: P of score s`t` recomputed from the row's base-2 lse `l2` (no running max or sum needed), 0 where masked. */
function probability(t: number, l2: string): string {
  return `let pv = select(0.0, exp2(s${t} * u.scale2 - ${l2}), live);`;
}

/** Backward: dS = P * (dP - delta) for score t, 0 where masked. */
function dScore(t: number, del: string): string {
  return `select(0.0, pv * (dp${t} - ${del}), live)`;
}

/**
 * The loop over the `rows` rows jj of the other tile that adds weight x row:
 * each [name, array] of `weights` is read as name = array[row * rows + jj],
 * then `extra` runs, then each [acc, weight, tile] of `terms` adds
 * weight * tile's chunks of this thread to acc`k`.
 */
function weightedRows(
  dc4: number,
  TS: number,
  loop: string,
  rows: string,
  row: string,
  weights: ReadonlyArray<readonly [string, string]>,
  extra: string,
  base: string,
  terms: ReadonlyArray<readonly [string, string, string]>,
  ind: string,
): string {
  const ind2 = ind + '  ';
  return `for (var ${loop} = 0u; ${loop} < ${rows} + u.zero; ${loop} += 1u) {${weights.map(([n, a]) => `${ind2}let ${n} = ${a}[${row} * ${rows} + ${loop}];`).join('')}${extra ? `${ind2}${extra}` : ''}${ind2}let ${base} = ${loop} * KS4 + c;
${ind2.slice(1)}${unroll(dc4, (k) => terms.map(([a, w, tl]) => `${a}${k} += ${w} * ${tl}[${base} + ${TS * k}u];`).join(ind2), ind2)}
${ind.slice(1)}}`;
}

/** KV positions and document ids of the tile at j0 into sKP, sKG (rows past kvLen: 0, never used). */
function loadKvMask(): string {
  return `for (var e = lid; e < BK; e += NT) {
      let gj = j0 + e;
      var kp: i32 = 0;
      var ks: i32 = 0;
      if (gj < u.kvLen) {
        kp = ${maskAt('oKP', 'gj')};
        ks = ${maskAt('oKS', 'gj')};
      }
      sKP[e] = kp;
      sKG[e] = ks;
    }`;
}

function resetKernel(): Kernel {
  return kernel(
    'attn.reset',
    [
      ['o', 'f32'],
      ['lse', 'f32'],
    ],
    [
      ['nO', 'u32'],
      ['nL', 'u32'],
      ['neginf', 'u32'],
    ],
    `
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = gid.x + gid.y * nwg.x * 64u;
  if (t < u.nO) { o[u.b_o + t] = 0.0; }
  if (t < u.nL) { lse[u.b_lse + t] = bitcast<f32>(u.neginf); }
}
`,
  );
}

function deltaKernel(): Kernel {
  return kernel(
    'attn.delta',
    [
      ['dO', 'f32'],
      ['o', 'f32'],
      ['delta', 'f32'],
    ],
    [
      ['n', 'u32'],
      ['qLen', 'u32'],
      ['heads', 'u32'],
      ['D', 'u32'],
    ],
    `
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = gid.x + gid.y * nwg.x * 64u;
  if (t >= u.n) { return; }
  // t = i * heads + h: the row of o and dO.
  let i = t / u.heads;
  let h = t % u.heads;
  var s: f32 = 0.0;
  for (var d = 0u; d < u.D; d += 1u) { s += dO[u.b_dO + t * u.D + d] * o[u.b_o + t * u.D + d]; }
  delta[u.b_delta + h * u.qLen + i] = s;
}
`,
  );
}

const PACK_FIELDS: ReadonlyArray<readonly [string, FieldType]> = [
  ['qLen', 'u32'],
  ['kvLen', 'u32'],
  ['tq', 'u32'],
  ['tk', 'u32'],
  ['nQt', 'u32'],
  ['nKt', 'u32'],
  ['oQP', 'u32'],
  ['oQS', 'u32'],
  ['oKP', 'u32'],
  ['oKS', 'u32'],
  ['oQM', 'u32'],
  ['oKM', 'u32'],
];

function packKernel(seg: boolean): Kernel {
  const bindings: Array<readonly [string, Elem]> = [
    ['qp', 'i32'],
    ['kp', 'i32'],
  ];
  if (seg) bindings.push(['qs', 'i32'], ['ks', 'i32']);
  bindings.push(['mk', 'i32']);
  const sq = (i: string) => (seg ? `qs[u.b_qs + ${i}]` : '0');
  const sk = (i: string) => (seg ? `ks[u.b_ks + ${i}]` : '0');
  const meta = (pos: string, sg: (i: string) => string, len: string, tile: string, out: string) => `
    let a = t * u.${tile};
    let e = min(u.${len}, a + u.${tile});
    var pmin = ${pos}[u.b_${pos} + a];
    var pmax = pmin;
    var smin: i32 = ${sg('a')};
    var smax = smin;
    for (var i = a + 1u; i < e; i += 1u) {
      let p = ${pos}[u.b_${pos} + i];
      let s: i32 = ${sg('i')};
      pmin = min(pmin, p);
      pmax = max(pmax, p);
      smin = min(smin, s);
      smax = max(smax, s);
    }
    let m = u.b_mk + u.${out} + 4u * t;
    mk[m] = pmin;
    mk[m + 1u] = pmax;
    mk[m + 2u] = smin;
    mk[m + 3u] = smax;`;
  return kernel(
    `attn.pack.${seg ? 'seg' : 'noseg'}`,
    bindings,
    PACK_FIELDS,
    `
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let t = gid.x + gid.y * nwg.x * 64u;
  if (t < u.qLen) {
    mk[u.b_mk + u.oQP + t] = qp[u.b_qp + t];
    mk[u.b_mk + u.oQS + t] = ${sq('t')};
  }
  if (t < u.kvLen) {
    mk[u.b_mk + u.oKP + t] = kp[u.b_kp + t];
    mk[u.b_mk + u.oKS + t] = ${sk('t')};
  }
  if (t < u.nQt) {${meta('qp', sq, 'qLen', 'tq', 'oQM')}
  }
  if (t < u.nKt) {${meta('kp', sk, 'kvLen', 'tk', 'oKM')}
  }
}
`,
  );
}

const f32s = (...names: string[]): Array<readonly [string, Elem]> => names.map((n) => [n, 'f32'] as const);

/** What a kernel's generator names: head dimension, tiles, threads per row, streamed rows per thread (SC), row stride in chunks. */
function dims(p: ForwardPlan | BackwardPlan, g: Geometry) {
  const TS = g.threadsPerRow;
  return { D: p.headDim, BQ: p.tileQ, BK: p.tileKV, TS, SC: ceilDiv(g.streamed, TS), KS4: g.dp4 + 1 };
}

/**
 * A forward or backward kernel named `name` (its pipeline key adds the head
 * dimension, tiles and threads per row): the f32 tensors `tensors` then the
 * mask scratch mk, ATTN_FIELDS, attnPrologue, then `body`, the kernel's own
 * code up to the end of main.
 */
function attnKernel(
  name: string,
  p: ForwardPlan | BackwardPlan,
  g: Geometry,
  tensors: string[],
  extra: Record<string, number>,
  arrays: ReadonlyArray<readonly [string, string, number]>,
  side: Side,
  body: string,
): Kernel {
  const { D, BQ, BK, TS } = dims(p, g);
  return kernel(`attn.${name}.d${D}.q${BQ}.k${BK}.t${TS}`, [...f32s(...tensors), ['mk', 'i32']], ATTN_FIELDS, `${attnPrologue(D, g, extra, arrays, side)}${body}`);
}

/** sKP, sKG: the KV tile's positions and document ids as loadKvMask writes them. */
const kvMaskArrays = (bk: number) =>
  [
    ['sKP', 'i32', bk],
    ['sKG', 'i32', bk],
  ] as const;

/** A workgroup array of n vec4 rows (stride KS4), for attnPrologue. */
const rowArray = (name: string, n: number, ks4: number) => [name, 'vec4<f32>', n * ks4] as const;

function forwardKernel(p: ForwardPlan): Kernel {
  const g = p.forward;
  const { D, BQ, BK, TS, SC: KC, KS4 } = dims(p, g);
  const arrays = [
    rowArray('sQ', BQ, KS4),
    rowArray('sKV', BK, KS4),
    ['sP', 'f32', BQ * BK],
    ...kvMaskArrays(BK),
  ] as const;
  return attnKernel('forward', p, g, ['q', 'k', 'v', 'o', 'lse'], { BQ, BK, KC }, arrays, Q_SIDE, `
  ${loadSide(D, 'sQ', 'q', Q_SIDE)}
  ${residentMask(Q_SIDE, ['var lseOld: f32 = 0.0;', 'var oldEmpty = true;'], [`lseOld = ${rowStat('lse', 'gi')};`, 'oldEmpty = isEmpty(lseOld);'])}
  // This thread's keys in a tile: c + TS * t (t < KC, clamped into the tile); its output chunks: c + TS * k (k < DC4).
  ${streamedRows(KC, TS, 'kr', 'BK')}
  var m: f32 = NEG;
  var l: f32 = 0.0;
  ${zeroAccs(g.dc4, ['acc'])}
  workgroupBarrier();
  for (var kt = 0u; kt < u.nKt; kt += 1u) {
    ${skipPair('kt & 1u')}
    let j0 = kt * BK;
    ${loadSide(D, 'sKV', 'k', KV_SIDE)}
    ${loadKvMask()}
    workgroupBarrier();
    // Scores (base 2); masked ones become NEG.
    ${dotRows(KC, 'kr', 'ir', [['s', 'qv', 'sQ', 'sKV']], '\n    ')}
    ${unroll(
      KC,
      (t) => `{
      ${keyLive(TS, t, 'rowOk')}
      s${t} = select(NEG, s${t} * u.scale2, live);
      if (${inTile(TS, t, 'BK')}) { sP[ir * BK + kr${t}] = s${t}; }
    }`,
      '\n    ',
    )}
    workgroupBarrier();
    var bmax: f32 = NEG;
    for (var jj = 0u; jj < BK + u.zero; jj += 1u) { bmax = max(bmax, sP[ir * BK + jj]); }
    workgroupBarrier();
    ${loadSide(D, 'sKV', 'v', KV_SIDE)}
    let mNew = max(m, bmax);
    let alpha = select(0.0, exp2(m - mNew), m > -1.0e29);
    ${unroll(KC, (t) => `if (${inTile(TS, t, 'BK')}) { sP[ir * BK + kr${t}] = select(0.0, exp2(s${t} - mNew), s${t} > -1.0e29); }`, '\n    ')}
    m = mNew;
    l *= alpha;
    ${unroll(g.dc4, (k) => `acc${k} *= alpha;`, '\n    ')}
    workgroupBarrier();
    ${weightedRows(g.dc4, TS, 'jj', 'BK', 'ir', [['pv', 'sP']], 'l += pv;', 'vb', [['acc', 'pv', 'sKV']], '\n    ')}
    workgroupBarrier();
  }
  // Merge this block's normalised result into the running one (l > 0 iff the row saw a key).
  if (rowOk && l > 0.0) {
    let lseB = (m + log2(l)) * LN2;
    var wa: f32 = 0.0;
    var wb: f32 = 1.0;
    var lseN = lseB;
    if (!oldEmpty) {
      let e = exp(-abs(lseOld - lseB));
      lseN = max(lseOld, lseB) + log(1.0 + e);
      wa = select(e, 1.0, lseOld >= lseB) / (1.0 + e);
      wb = select(1.0, e, lseOld >= lseB) / (1.0 + e);
    }
    let inv = wb / l;
    let ob = u.b_o + (gi * u.heads + h) * D;
    ${unroll(
      g.dc4,
      (k) => `{
      var y = acc${k} * inv;
      if (!oldEmpty) {
        let b = ob + 4u * (${chunkOf(TS, k)});
        y += vec4<f32>(o[b], o[b + 1u], o[b + 2u], o[b + 3u]) * wa;
      }
      ${storeChunk(D, 'o', 'ob', chunkOf(TS, k), 'y', '=')}
    }`,
      '\n    ',
    )}
    if (c == 0u) { ${rowStat('lse', 'gi')} = lseN; }
  }
}
`,
  );
}

function dkdvKernel(p: BackwardPlan): Kernel {
  const g = p.dkdv;
  const { D, BQ, BK, TS, SC: QC, KS4 } = dims(p, g);
  const arrays = [
    rowArray('sK', BK, KS4),
    rowArray('sV', BK, KS4),
    rowArray('sQ', BQ, KS4),
    rowArray('sdO', BQ, KS4),
    ['sPT', 'f32', BK * BQ],
    ['sDS', 'f32', BK * BQ],
    ['sL', 'f32', BQ],
    ['sDel', 'f32', BQ],
    ['sQP', 'i32', BQ],
    ['sQG', 'i32', BQ],
  ] as const;
  return attnKernel('dkdv', p, g, ['q', 'k', 'v', 'dO', 'lse', 'delta', 'dk', 'dv'], { BQ, BK, QC }, arrays, KV_SIDE, `
  ${loadSide(D, 'sK', 'k', KV_SIDE)}
  ${loadSide(D, 'sV', 'v', KV_SIDE)}
  ${residentMask(KV_SIDE, [], [])}
  // This thread's queries in a tile: c + TS * t (t < QC, clamped into the tile); its dK, dV chunks: c + TS * k (k < DC4).
  ${streamedRows(QC, TS, 'qr', 'BQ')}
  ${zeroAccs(g.dc4, ['accK', 'accV'])}
  var it = 0u;
  for (var hh = 0u; hh < u.group; hh += 1u) {
    let h = g * u.group + hh;
    for (var qt = 0u; qt < u.nQt; qt += 1u) {
      let slot = it & 1u;
      it += 1u;
      ${skipPair('slot')}
      let i0 = qt * BQ;
      ${loadSide(D, 'sQ', 'q', Q_SIDE)}
      ${loadSide(D, 'sdO', 'dO', Q_SIDE)}
      for (var e = lid; e < BQ; e += NT) {
        let gi = i0 + e;
        var lv: f32 = NEG;
        var dl: f32 = 0.0;
        var qp: i32 = 0;
        var qs: i32 = 0;
        if (gi < u.qLen) {
          ${loadLse2('lv', 'gi', '\n          ')}
          dl = ${rowStat('delta', 'gi')};
          qp = ${maskAt('oQP', 'gi')};
          qs = ${maskAt('oQS', 'gi')};
        }
        sL[e] = lv;
        sDel[e] = dl;
        sQP[e] = qp;
        sQG[e] = qs;
      }
      workgroupBarrier();
      ${dotRows(QC, 'qr', 'jr', [['s', 'kv', 'sK', 'sQ'], ['dp', 'vv', 'sV', 'sdO']], '\n      ')}
      ${unroll(
        QC,
        (t) => `{
        let live = (${inTile(TS, t, 'BQ')}) & keyOk & (sL[qr${t}] > -1.0e29) & ${allowed('kpos', `sQP[qr${t}]`, 'kseg', `sQG[qr${t}]`)};
        ${probability(t, `sL[qr${t}]`)}
        if (${inTile(TS, t, 'BQ')}) {
          sPT[jr * BQ + qr${t}] = pv;
          sDS[jr * BQ + qr${t}] = ${dScore(t, `sDel[qr${t}]`)};
        }
      }`,
        '\n      ',
      )}
      workgroupBarrier();
      ${weightedRows(g.dc4, TS, 'ii', 'BQ', 'jr', [['pv', 'sPT'], ['ds', 'sDS']], '', 'qb', [['accV', 'pv', 'sdO'], ['accK', 'ds', 'sQ']], '\n      ')}
      workgroupBarrier();
    }
  }
  if (keyOk) {
    let base = (gj * u.kvHeads + g) * D;
    ${unroll(
      g.dc4,
      (k) =>
        `${storeChunk(D, 'dk', 'u.b_dk + base', chunkOf(TS, k), `u.scale * accK${k}`, '+=')}\n    ${storeChunk(D, 'dv', 'u.b_dv + base', chunkOf(TS, k), `accV${k}`, '+=')}`,
      '\n    ',
    )}
  }
}
`,
  );
}

function dqKernel(p: BackwardPlan): Kernel {
  const g = p.dq;
  const { D, BQ, BK, TS, SC: KC, KS4 } = dims(p, g);
  const arrays = [
    rowArray('sQ', BQ, KS4),
    rowArray('sdO', BQ, KS4),
    rowArray('sK', BK, KS4),
    rowArray('sV', BK, KS4),
    ['sDS', 'f32', BQ * BK],
    ...kvMaskArrays(BK),
  ] as const;
  return attnKernel('dq', p, g, ['q', 'k', 'v', 'dO', 'lse', 'delta', 'dq'], { BQ, BK, KC }, arrays, Q_SIDE, `
  ${loadSide(D, 'sQ', 'q', Q_SIDE)}
  ${loadSide(D, 'sdO', 'dO', Q_SIDE)}
  ${residentMask(Q_SIDE, ['var l2: f32 = NEG;', 'var del: f32 = 0.0;'], [loadLse2('l2', 'gi', '\n    '), `del = ${rowStat('delta', 'gi')};`])}
  let rowLive = l2 > -1.0e29;
  // This thread's keys in a tile: c + TS * t (t < KC, clamped into the tile); its dQ chunks: c + TS * k (k < DC4).
  ${streamedRows(KC, TS, 'kr', 'BK')}
  ${zeroAccs(g.dc4, ['acc'])}
  workgroupBarrier();
  for (var kt = 0u; kt < u.nKt; kt += 1u) {
    ${skipPair('kt & 1u')}
    let j0 = kt * BK;
    ${loadSide(D, 'sK', 'k', KV_SIDE)}
    ${loadSide(D, 'sV', 'v', KV_SIDE)}
    ${loadKvMask()}
    workgroupBarrier();
    ${dotRows(KC, 'kr', 'ir', [['s', 'qv', 'sQ', 'sK'], ['dp', 'ov', 'sdO', 'sV']], '\n    ')}
    ${unroll(
      KC,
      (t) => `{
      ${keyLive(TS, t, 'rowLive')}
      ${probability(t, 'l2')}
      if (${inTile(TS, t, 'BK')}) { sDS[ir * BK + kr${t}] = ${dScore(t, 'del')}; }
    }`,
      '\n    ',
    )}
    workgroupBarrier();
    ${weightedRows(g.dc4, TS, 'jj', 'BK', 'ir', [['ds', 'sDS']], '', 'kb', [['acc', 'ds', 'sK']], '\n    ')}
    workgroupBarrier();
  }
  if (rowOk) {
    let base = u.b_dq + (gi * u.heads + h) * D;
    ${unroll(g.dc4, (k) => storeChunk(D, 'dq', 'base', chunkOf(TS, k), `u.scale * acc${k}`, '+='), '\n    ')}
  }
}
`,
  );
}

// ---------------------------------------------------------------------------
// Host side.

function checkShape(s: AttentionShape): void {
  const ints: Array<[string, number]> = [
    ['heads', s.heads],
    ['kvHeads', s.kvHeads],
    ['headDim', s.headDim],
    ['qLen', s.qLen],
    ['kvLen', s.kvLen],
  ];
  for (const [n, v] of ints) {
    if (!(Number.isSafeInteger(v) && v >= (n === 'qLen' || n === 'kvLen' ? 0 : 1))) throw new RangeError(`webgpu attention: ${n} must be a ${n.endsWith('Len') ? 'non-negative' : 'positive'} integer, got ${v}`);
  }
  if (s.heads % s.kvHeads !== 0) throw new RangeError(`webgpu attention: heads (${s.heads}) must be a multiple of kvHeads (${s.kvHeads})`);
  if (!Number.isFinite(s.scale)) throw new RangeError(`webgpu attention: scale must be finite, got ${s.scale}`);
}

function need(t: Tensor | IntTensor, n: number, name: string): void {
  if (t.length < n) throw new RangeError(`webgpu attention: ${name} holds ${t.length} elements, needs ${n}`);
}

export function createWebGPUAttention(
  ctx: GpuContext,
  bind: (t: Tensor | IntTensor) => GpuBinding,
  options: WebGPUAttentionOptions = {},
): EngineAttention {
  const limit = Math.min(ctx.device.limits.maxComputeWorkgroupStorageSize, options.workgroupStorage ?? Infinity);
  const forwardPlans = new Map<number, { plan: ForwardPlan; kernel: Kernel }>();
  const backwardPlans = new Map<number, { plan: BackwardPlan; dkdv: Kernel; dq: Kernel }>();
  const reset = resetKernel();
  const deltaK = deltaKernel();
  const pack = [packKernel(false), packKernel(true)];
  let scratch: GPUBuffer | null = null;
  let scratchLen = 0;

  const align = ctx.device.limits.minStorageBufferOffsetAlignment;
  const variants = new Map<string, string>();

  /** A binding's window as gpu.ts computes it: [off, end) in bytes, off aligned. */
  function windowOf(b: GpuBinding): { off: number; end: number } {
    const start = b.offset * 4;
    const off = Math.floor(start / align) * align;
    return { off, end: Math.min(Math.max(start + b.length * 4, off + 4), b.buffer.size) };
  }

  /**
   * Dispatches kernel k on `tensors` (one per k.tensors entry). WebGPU refuses
   * two writable bindings whose ranges overlap, and a window reaches up to 252
   * bytes before its tensor: tensors whose windows overlap in one buffer (the
   * same tensor twice, or neighbours closer than the alignment) share one
   * binding that covers them all, through a variant of the WGSL.
   */
  function run(k: Kernel, tensors: GpuBinding[], values: Record<string, number>, workgroups: [number, number]): void {
    const n = tensors.length;
    if (n !== k.tensors.length) throw new Error(`webgpu attention: ${k.key} takes ${k.tensors.length} tensors, got ${n}`);
    const win = tensors.map(windowOf);
    const parent = tensors.map((_, i) => i);
    const find = (i: number): number => (parent[i] === i ? i : (parent[i] = find(parent[i])));
    type Group = { off: number; end: number; start: number };
    let groups = new Map<number, Group>();
    // Merge groups whose windows overlap until none do (a merged window may reach a further neighbour).
    for (let merged = true; merged; ) {
      merged = false;
      groups = new Map();
      for (let i = 0; i < n; i++) {
        const r = find(i);
        const g = groups.get(r);
        const start = tensors[i].offset * 4;
        groups.set(r, g ? { off: Math.min(g.off, win[i].off), end: Math.max(g.end, win[i].end), start: Math.min(g.start, start) } : { ...win[i], start });
      }
      const roots = [...groups.keys()];
      for (let x = 0; x < roots.length && !merged; x++) {
        for (let y = x + 1; y < roots.length && !merged; y++) {
          const [a, b] = [roots[x], roots[y]];
          const ga = groups.get(a)!;
          const gb = groups.get(b)!;
          if (tensors[a].buffer !== tensors[b].buffer || !(ga.off < gb.end && gb.off < ga.end)) continue;
          if (k.tensors[a][1] !== k.tensors[b][1]) throw new Error(`webgpu attention: ${k.key}: f32 and i32 tensors overlap in one buffer`);
          parent[Math.max(a, b)] = Math.min(a, b);
          merged = true;
        }
      }
    }
    const slots = tensors.map((_, i) => find(i));
    const reps = [...new Set(slots)];
    const bindings: GpuBinding[] = reps.map((r) => {
      const g = groups.get(r)!;
      return { buffer: tensors[r].buffer, offset: g.start / 4, length: (g.end - g.start) / 4 };
    });
    const firsts = tensors.map((t, i) => (t.offset * 4 - groups.get(slots[i])!.off) / 4);
    const variant = reps.length === n ? '' : `|${slots.join(',')}`;
    const key = k.key + variant;
    let wgsl = variants.get(key);
    if (wgsl === undefined) {
      wgsl = wgslOf(k, slots);
      variants.set(key, wgsl);
    }
    const uniforms: UniformWord[] = [
      ...firsts,
      ...k.fields.map(([name, t]): UniformWord => {
        const v = values[name];
        if (v === undefined) throw new Error(`webgpu attention: ${k.key}: no value for uniform ${name}`);
        return t === 'f32' ? { f32: v } : v;
      }),
    ];
    ctx.dispatch({ key, wgsl, bindings, uniforms, workgroups });
  }

  function forwardPlan(D: number) {
    let p = forwardPlans.get(D);
    if (!p) {
      const plan = planForward(D, limit);
      p = { plan, kernel: forwardKernel(plan) };
      forwardPlans.set(D, p);
    }
    return p;
  }

  function backwardPlan(D: number) {
    let p = backwardPlans.get(D);
    if (!p) {
      const plan = planBackward(D, limit);
      p = { plan, dkdv: dkdvKernel(plan), dq: dqKernel(plan) };
      backwardPlans.set(D, p);
    }
    return p;
  }

  /**
   * Records the pack of the mask into the scratch buffer for tiles of tq x tk;
   * returns its binding and the uniform values every attention kernel takes.
   */
  function packMask(s: AttentionShape, m: AttentionMask, tq: number, tk: number): { mk: GpuBinding; values: Record<string, number> } {
    const { qLen, kvLen } = s;
    need(m.qPos, qLen, 'qPos');
    need(m.kvPos, kvLen, 'kvPos');
    if ((m.qSeg === null) !== (m.kvSeg === null)) throw new RangeError('webgpu attention: qSeg and kvSeg must be both present or both null');
    if (m.qSeg) need(m.qSeg, qLen, 'qSeg');
    if (m.kvSeg) need(m.kvSeg, kvLen, 'kvSeg');
    const nQt = ceilDiv(qLen, tq);
    const nKt = ceilDiv(kvLen, tk);
    const oQP = 0;
    const oQS = qLen;
    const oKP = 2 * qLen;
    const oKS = 2 * qLen + kvLen;
    const oQM = 2 * (qLen + kvLen);
    const oKM = oQM + 4 * nQt;
    const n = oKM + 4 * nKt;
    if (!scratch || scratchLen < n) {
      // The old buffer stays alive for the work already recorded on it.
      scratchLen = Math.max(n, 2 * scratchLen, 4096);
      scratch = ctx.buffer(scratchLen);
    }
    const mk: GpuBinding = { buffer: scratch, offset: 0, length: n };
    const offsets = { oQP, oQS, oKP, oKS, oQM, oKM };
    const seg = m.qSeg !== null && m.kvSeg !== null;
    const bindings = [bind(m.qPos), bind(m.kvPos)];
    if (m.qSeg && m.kvSeg) bindings.push(bind(m.qSeg), bind(m.kvSeg));
    bindings.push(mk);
    run(pack[seg ? 1 : 0], bindings, { qLen, kvLen, tq, tk, nQt, nKt, ...offsets }, grid(Math.max(qLen, kvLen), 64));
    return {
      mk,
      values: {
        qLen,
        kvLen,
        heads: s.heads,
        kvHeads: s.kvHeads,
        group: s.heads / s.kvHeads,
        nQt,
        nKt,
        total: 0,
        causal: s.causal ? 1 : 0,
        window: s.window ?? 0,
        scale: s.scale,
        scale2: s.scale * LOG2E,
        ...offsets,
        zero: 0,
      },
    };
  }

  return {
    reset(s, o, lse) {
      checkShape(s);
      const nO = s.qLen * s.heads * s.headDim;
      const nL = s.heads * s.qLen;
      need(o, nO, 'o');
      need(lse, nL, 'lse');
      if (nO === 0 && nL === 0) return;
      run(reset, [bind(o), bind(lse)], { nO, nL, neginf: NEG_INF_BITS }, grid(Math.max(nO, nL), 64));
    },

    forward(s, m, q, k, v, o, lse) {
      checkShape(s);
      const { qLen, kvLen, heads, kvHeads, headDim: D } = s;
      need(q, qLen * heads * D, 'q');
      need(k, kvLen * kvHeads * D, 'k');
      need(v, kvLen * kvHeads * D, 'v');
      need(o, qLen * heads * D, 'o');
      need(lse, heads * qLen, 'lse');
      if (qLen === 0 || kvLen === 0) return;
      const { plan, kernel: fk } = forwardPlan(D);
      const { mk, values } = packMask(s, m, plan.tileQ, plan.tileKV);
      const total = values.nQt * heads;
      run(fk, [bind(q), bind(k), bind(v), bind(o), bind(lse), mk], { ...values, total }, grid(total, 1));
    },

    delta(s, dO, o, delta) {
      checkShape(s);
      const n = s.qLen * s.heads;
      need(dO, n * s.headDim, 'dO');
      need(o, n * s.headDim, 'o');
      need(delta, n, 'delta');
      if (n === 0) return;
      run(deltaK, [bind(dO), bind(o), bind(delta)], { n, qLen: s.qLen, heads: s.heads, D: s.headDim }, grid(n, 64));
    },

    backward(s, m, t, g) {
      checkShape(s);
      const { qLen, kvLen, heads, kvHeads, headDim: D } = s;
      need(t.q, qLen * heads * D, 'q');
      need(t.k, kvLen * kvHeads * D, 'k');
      need(t.v, kvLen * kvHeads * D, 'v');
      need(t.dO, qLen * heads * D, 'dO');
      need(t.lse, heads * qLen, 'lse');
      need(t.delta, heads * qLen, 'delta');
      need(g.dq, qLen * heads * D, 'dq');
      need(g.dk, kvLen * kvHeads * D, 'dk');
      need(g.dv, kvLen * kvHeads * D, 'dv');
      if (qLen === 0 || kvLen === 0) return;
      const bp = backwardPlan(D);
      const { mk, values } = packMask(s, m, bp.plan.tileQ, bp.plan.tileKV);
      const q = bind(t.q);
      const k = bind(t.k);
      const v = bind(t.v);
      const dO = bind(t.dO);
      const lse = bind(t.lse);
      const delta = bind(t.delta);
      const totalKV = values.nKt * kvHeads;
      run(bp.dkdv, [q, k, v, dO, lse, delta, bind(g.dk), bind(g.dv), mk], { ...values, total: totalKV }, grid(totalKV, 1));
      const totalQ = values.nQt * heads;
      run(bp.dq, [q, k, v, dO, lse, delta, bind(g.dq), mk], { ...values, total: totalQ }, grid(totalQ, 1));
    },
  };
}
