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

/** KV positions and document ids of the tile at j0 into sKP, sKG (rows past kvLen: 0, never used). */
function loadKvMask(): string {
  return `for (var e = lid; e < BK; e += NT) {
      let gj = j0 + e;
      var kp: i32 = 0;
      var ks: i32 = 0;
      if (gj < u.kvLen) {
        kp = mk[u.b_mk + u.oKP + gj];
        ks = mk[u.b_mk + u.oKS + gj];
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

function forwardKernel(p: ForwardPlan): Kernel {
  const D = p.headDim;
  const BQ = p.tileQ;
  const BK = p.tileKV;
  const g = p.forward;
  const TS = g.threadsPerRow;
  const KC = ceilDiv(BK, TS);
  const KS4 = g.dp4 + 1;
  return kernel(
    `attn.forward.d${D}.q${BQ}.k${BK}.t${TS}`,
    [
      ['q', 'f32'],
      ['k', 'f32'],
      ['v', 'f32'],
      ['o', 'f32'],
      ['lse', 'f32'],
      ['mk', 'i32'],
    ],
    ATTN_FIELDS,
    `
${geometryConsts(D, g, { BQ, BK, KC })}
${COMMON}
var<workgroup> sQ: array<vec4<f32>, ${BQ * KS4}>;
var<workgroup> sKV: array<vec4<f32>, ${BK * KS4}>;
var<workgroup> sP: array<f32, ${BQ * BK}>;
var<workgroup> sKP: array<i32, ${BK}>;
var<workgroup> sKG: array<i32, ${BK}>;
var<workgroup> sSkip: array<u32, 2>;

@compute @workgroup_size(${g.threads})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let wid = wg.x + wg.y * nwg.x;
  if (wid >= u.total) { return; }
  let h = wid % u.heads;
  let qt = wid / u.heads;
  let g = h / u.group;
  let i0 = qt * BQ;
  let r = lid / TS;
  let c = lid % TS;
  let row = i0 + r;
  let rowOk = row < u.qLen;
  ${loadTile(D, 'sQ', 'BQ', 'q', 'i0', 'u.qLen', 'u.heads', 'h')}
  var qpos: i32 = 0;
  var qseg: i32 = 0;
  var lseOld: f32 = 0.0;
  var oldEmpty = true;
  if (rowOk) {
    qpos = mk[u.b_mk + u.oQP + row];
    qseg = mk[u.b_mk + u.oQS + row];
    lseOld = lse[u.b_lse + h * u.qLen + row];
    oldEmpty = isEmpty(lseOld);
  }
  // This thread's keys in a tile: c + TS * t (t < KC, clamped into the tile); its output chunks: c + TS * k (k < DC4).
  ${unroll(KC, (t) => `let kr${t} = min(c + ${TS * t}u, BK - 1u);`, '\n  ')}
  var m: f32 = NEG;
  var l: f32 = 0.0;
  ${unroll(g.dc4, (k) => `var acc${k} = vec4<f32>(0.0);`, '\n  ')}
  workgroupBarrier();
  for (var kt = 0u; kt < u.nKt; kt += 1u) {
    if (lid == 0u) { sSkip[kt & 1u] = skipTile(qt, kt); }
    if (workgroupUniformLoad(&sSkip[kt & 1u]) != 0u) { continue; }
    let j0 = kt * BK;
    ${loadTile(D, 'sKV', 'BK', 'k', 'j0', 'u.kvLen', 'u.kvHeads', 'g')}
    ${loadKvMask()}
    workgroupBarrier();
    // Scores (base 2); masked ones become NEG.
    ${unroll(KC, (t) => `var s${t}: f32 = 0.0;`, '\n    ')}
    for (var d4 = 0u; d4 < D4 + u.zero; d4 += 1u) {
      let qv = sQ[r * KS4 + d4];
      ${unroll(KC, (t) => `s${t} += dot(qv, sKV[kr${t} * KS4 + d4]);`, '\n      ')}
    }
    ${unroll(
      KC,
      (t) => `{
      let live = (c + ${TS * t}u < BK) & rowOk & (j0 + kr${t} < u.kvLen) & ((u.causal == 0u) | (sKP[kr${t}] <= qpos)) & (sKG[kr${t}] == qseg);
      s${t} = select(NEG, s${t} * u.scale2, live);
      if (c + ${TS * t}u < BK) { sP[r * BK + kr${t}] = s${t}; }
    }`,
      '\n    ',
    )}
    workgroupBarrier();
    var bmax: f32 = NEG;
    for (var jj = 0u; jj < BK + u.zero; jj += 1u) { bmax = max(bmax, sP[r * BK + jj]); }
    workgroupBarrier();
    ${loadTile(D, 'sKV', 'BK', 'v', 'j0', 'u.kvLen', 'u.kvHeads', 'g')}
    let mNew = max(m, bmax);
    let alpha = select(0.0, exp2(m - mNew), m > -1.0e29);
    ${unroll(KC, (t) => `if (c + ${TS * t}u < BK) { sP[r * BK + kr${t}] = select(0.0, exp2(s${t} - mNew), s${t} > -1.0e29); }`, '\n    ')}
    m = mNew;
    l *= alpha;
    ${unroll(g.dc4, (k) => `acc${k} *= alpha;`, '\n    ')}
    workgroupBarrier();
    for (var jj = 0u; jj < BK + u.zero; jj += 1u) {
      let pv = sP[r * BK + jj];
      l += pv;
      let vb = jj * KS4 + c;
      ${unroll(g.dc4, (k) => `acc${k} += pv * sKV[vb + ${TS * k}u];`, '\n      ')}
    }
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
    let ob = u.b_o + (row * u.heads + h) * D;
    ${unroll(
      g.dc4,
      (k) => `{
      var y = acc${k} * inv;
      if (!oldEmpty) {
        let b = ob + 4u * (c + ${TS * k}u);
        y += vec4<f32>(o[b], o[b + 1u], o[b + 2u], o[b + 3u]) * wa;
      }
      ${storeChunk(D, 'o', 'ob', `c + ${TS * k}u`, 'y', '=')}
    }`,
      '\n    ',
    )}
    if (c == 0u) { lse[u.b_lse + h * u.qLen + row] = lseN; }
  }
}
`,
  );
}

function dkdvKernel(p: BackwardPlan): Kernel {
  const D = p.headDim;
  const BQ = p.tileQ;
  const BK = p.tileKV;
  const g = p.dkdv;
  const TS = g.threadsPerRow;
  const QC = ceilDiv(BQ, TS);
  const KS4 = g.dp4 + 1;
  return kernel(
    `attn.dkdv.d${D}.q${BQ}.k${BK}.t${TS}`,
    [
      ['q', 'f32'],
      ['k', 'f32'],
      ['v', 'f32'],
      ['dO', 'f32'],
      ['lse', 'f32'],
      ['delta', 'f32'],
      ['dk', 'f32'],
      ['dv', 'f32'],
      ['mk', 'i32'],
    ],
    ATTN_FIELDS,
    `
${geometryConsts(D, g, { BQ, BK, QC })}
${COMMON}
var<workgroup> sK: array<vec4<f32>, ${BK * KS4}>;
var<workgroup> sV: array<vec4<f32>, ${BK * KS4}>;
var<workgroup> sQ: array<vec4<f32>, ${BQ * KS4}>;
var<workgroup> sdO: array<vec4<f32>, ${BQ * KS4}>;
var<workgroup> sPT: array<f32, ${BK * BQ}>;
var<workgroup> sDS: array<f32, ${BK * BQ}>;
var<workgroup> sL: array<f32, ${BQ}>;
var<workgroup> sDel: array<f32, ${BQ}>;
var<workgroup> sQP: array<i32, ${BQ}>;
var<workgroup> sQG: array<i32, ${BQ}>;
var<workgroup> sSkip: array<u32, 2>;

@compute @workgroup_size(${g.threads})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let wid = wg.x + wg.y * nwg.x;
  if (wid >= u.total) { return; }
  let g = wid % u.kvHeads;
  let kt = wid / u.kvHeads;
  let j0 = kt * BK;
  let jr = lid / TS;
  let c = lid % TS;
  let gj = j0 + jr;
  let keyOk = gj < u.kvLen;
  ${loadTile(D, 'sK', 'BK', 'k', 'j0', 'u.kvLen', 'u.kvHeads', 'g')}
  ${loadTile(D, 'sV', 'BK', 'v', 'j0', 'u.kvLen', 'u.kvHeads', 'g')}
  var kpos: i32 = 0;
  var kseg: i32 = 0;
  if (keyOk) {
    kpos = mk[u.b_mk + u.oKP + gj];
    kseg = mk[u.b_mk + u.oKS + gj];
  }
  // This thread's queries in a tile: c + TS * t (t < QC, clamped into the tile); its dK, dV chunks: c + TS * k (k < DC4).
  ${unroll(QC, (t) => `let qr${t} = min(c + ${TS * t}u, BQ - 1u);`, '\n  ')}
  ${unroll(g.dc4, (k) => `var accK${k} = vec4<f32>(0.0);\n  var accV${k} = vec4<f32>(0.0);`, '\n  ')}
  var it = 0u;
  for (var hh = 0u; hh < u.group; hh += 1u) {
    let h = g * u.group + hh;
    for (var qt = 0u; qt < u.nQt; qt += 1u) {
      if (lid == 0u) { sSkip[it & 1u] = skipTile(qt, kt); }
      let skp = workgroupUniformLoad(&sSkip[it & 1u]);
      it += 1u;
      if (skp != 0u) { continue; }
      let i0 = qt * BQ;
      ${loadTile(D, 'sQ', 'BQ', 'q', 'i0', 'u.qLen', 'u.heads', 'h')}
      ${loadTile(D, 'sdO', 'BQ', 'dO', 'i0', 'u.qLen', 'u.heads', 'h')}
      for (var e = lid; e < BQ; e += NT) {
        let gi = i0 + e;
        var lv: f32 = NEG;
        var dl: f32 = 0.0;
        var qp: i32 = 0;
        var qs: i32 = 0;
        if (gi < u.qLen) {
          let x = lse[u.b_lse + h * u.qLen + gi];
          if (!isEmpty(x)) { lv = x * LOG2E; }
          dl = delta[u.b_delta + h * u.qLen + gi];
          qp = mk[u.b_mk + u.oQP + gi];
          qs = mk[u.b_mk + u.oQS + gi];
        }
        sL[e] = lv;
        sDel[e] = dl;
        sQP[e] = qp;
        sQG[e] = qs;
      }
      workgroupBarrier();
      ${unroll(QC, (t) => `var s${t}: f32 = 0.0;\n      var dp${t}: f32 = 0.0;`, '\n      ')}
      for (var d4 = 0u; d4 < D4 + u.zero; d4 += 1u) {
        let kv = sK[jr * KS4 + d4];
        let vv = sV[jr * KS4 + d4];
        ${unroll(QC, (t) => `s${t} += dot(kv, sQ[qr${t} * KS4 + d4]);\n        dp${t} += dot(vv, sdO[qr${t} * KS4 + d4]);`, '\n        ')}
      }
      ${unroll(
        QC,
        (t) => `{
        let live = (c + ${TS * t}u < BQ) & keyOk & (sL[qr${t}] > -1.0e29) & ((u.causal == 0u) | (kpos <= sQP[qr${t}])) & (kseg == sQG[qr${t}]);
        let pv = select(0.0, exp2(s${t} * u.scale2 - sL[qr${t}]), live);
        if (c + ${TS * t}u < BQ) {
          sPT[jr * BQ + qr${t}] = pv;
          sDS[jr * BQ + qr${t}] = select(0.0, pv * (dp${t} - sDel[qr${t}]), live);
        }
      }`,
        '\n      ',
      )}
      workgroupBarrier();
      for (var ii = 0u; ii < BQ + u.zero; ii += 1u) {
        let pv = sPT[jr * BQ + ii];
        let ds = sDS[jr * BQ + ii];
        let qb = ii * KS4 + c;
        ${unroll(g.dc4, (k) => `accV${k} += pv * sdO[qb + ${TS * k}u];\n        accK${k} += ds * sQ[qb + ${TS * k}u];`, '\n        ')}
      }
      workgroupBarrier();
    }
  }
  if (keyOk) {
    let base = (gj * u.kvHeads + g) * D;
    ${unroll(
      g.dc4,
      (k) =>
        `${storeChunk(D, 'dk', 'u.b_dk + base', `c + ${TS * k}u`, `u.scale * accK${k}`, '+=')}\n    ${storeChunk(D, 'dv', 'u.b_dv + base', `c + ${TS * k}u`, `accV${k}`, '+=')}`,
      '\n    ',
    )}
  }
}
`,
  );
}

function dqKernel(p: BackwardPlan): Kernel {
  const D = p.headDim;
  const BQ = p.tileQ;
  const BK = p.tileKV;
  const g = p.dq;
  const TS = g.threadsPerRow;
  const KC = ceilDiv(BK, TS);
  const KS4 = g.dp4 + 1;
  return kernel(
    `attn.dq.d${D}.q${BQ}.k${BK}.t${TS}`,
    [
      ['q', 'f32'],
      ['k', 'f32'],
      ['v', 'f32'],
      ['dO', 'f32'],
      ['lse', 'f32'],
      ['delta', 'f32'],
      ['dq', 'f32'],
      ['mk', 'i32'],
    ],
    ATTN_FIELDS,
    `
${geometryConsts(D, g, { BQ, BK, KC })}
${COMMON}
var<workgroup> sQ: array<vec4<f32>, ${BQ * KS4}>;
var<workgroup> sdO: array<vec4<f32>, ${BQ * KS4}>;
var<workgroup> sK: array<vec4<f32>, ${BK * KS4}>;
var<workgroup> sV: array<vec4<f32>, ${BK * KS4}>;
var<workgroup> sDS: array<f32, ${BQ * BK}>;
var<workgroup> sKP: array<i32, ${BK}>;
var<workgroup> sKG: array<i32, ${BK}>;
var<workgroup> sSkip: array<u32, 2>;

@compute @workgroup_size(${g.threads})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let wid = wg.x + wg.y * nwg.x;
  if (wid >= u.total) { return; }
  let h = wid % u.heads;
  let qt = wid / u.heads;
  let g = h / u.group;
  let i0 = qt * BQ;
  let ir = lid / TS;
  let c = lid % TS;
  let gi = i0 + ir;
  let rowOk = gi < u.qLen;
  ${loadTile(D, 'sQ', 'BQ', 'q', 'i0', 'u.qLen', 'u.heads', 'h')}
  ${loadTile(D, 'sdO', 'BQ', 'dO', 'i0', 'u.qLen', 'u.heads', 'h')}
  var qpos: i32 = 0;
  var qseg: i32 = 0;
  var l2: f32 = NEG;
  var del: f32 = 0.0;
  if (rowOk) {
    qpos = mk[u.b_mk + u.oQP + gi];
    qseg = mk[u.b_mk + u.oQS + gi];
    let x = lse[u.b_lse + h * u.qLen + gi];
    if (!isEmpty(x)) { l2 = x * LOG2E; }
    del = delta[u.b_delta + h * u.qLen + gi];
  }
  let rowLive = l2 > -1.0e29;
  // This thread's keys in a tile: c + TS * t (t < KC, clamped into the tile); its dQ chunks: c + TS * k (k < DC4).
  ${unroll(KC, (t) => `let kr${t} = min(c + ${TS * t}u, BK - 1u);`, '\n  ')}
  ${unroll(g.dc4, (k) => `var acc${k} = vec4<f32>(0.0);`, '\n  ')}
  workgroupBarrier();
  for (var kt = 0u; kt < u.nKt; kt += 1u) {
    if (lid == 0u) { sSkip[kt & 1u] = skipTile(qt, kt); }
    if (workgroupUniformLoad(&sSkip[kt & 1u]) != 0u) { continue; }
    let j0 = kt * BK;
    ${loadTile(D, 'sK', 'BK', 'k', 'j0', 'u.kvLen', 'u.kvHeads', 'g')}
    ${loadTile(D, 'sV', 'BK', 'v', 'j0', 'u.kvLen', 'u.kvHeads', 'g')}
    ${loadKvMask()}
    workgroupBarrier();
    ${unroll(KC, (t) => `var s${t}: f32 = 0.0;\n    var dp${t}: f32 = 0.0;`, '\n    ')}
    for (var d4 = 0u; d4 < D4 + u.zero; d4 += 1u) {
      let qv = sQ[ir * KS4 + d4];
      let ov = sdO[ir * KS4 + d4];
      ${unroll(KC, (t) => `s${t} += dot(qv, sK[kr${t} * KS4 + d4]);\n      dp${t} += dot(ov, sV[kr${t} * KS4 + d4]);`, '\n      ')}
    }
    ${unroll(
      KC,
      (t) => `{
      let live = (c + ${TS * t}u < BK) & rowLive & (j0 + kr${t} < u.kvLen) & ((u.causal == 0u) | (sKP[kr${t}] <= qpos)) & (sKG[kr${t}] == qseg);
      let pv = select(0.0, exp2(s${t} * u.scale2 - l2), live);
      if (c + ${TS * t}u < BK) { sDS[ir * BK + kr${t}] = select(0.0, pv * (dp${t} - del), live); }
    }`,
      '\n    ',
    )}
    workgroupBarrier();
    for (var jj = 0u; jj < BK + u.zero; jj += 1u) {
      let ds = sDS[ir * BK + jj];
      let kb = jj * KS4 + c;
      ${unroll(g.dc4, (k) => `acc${k} += ds * sK[kb + ${TS * k}u];`, '\n      ')}
    }
    workgroupBarrier();
  }
  if (rowOk) {
    let base = u.b_dq + (gi * u.heads + h) * D;
    ${unroll(g.dc4, (k) => storeChunk(D, 'dq', 'base', `c + ${TS * k}u`, `u.scale * acc${k}`, '+='), '\n    ')}
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
