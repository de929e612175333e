/**
 * WGSL of the webgpu engine's ops (engine.ts), one generator per op in the
 * layer-list order of src/engine/types.ts. Each returns a `Kernel`: the WGSL
 * and the pipeline key that names it (every constant that shapes the WGSL is
 * in the key; sizes and offsets travel as uniforms). Generated once per key.
 *
 * Conventions (gpu.ts): binding 0 is the uniform struct U, which begins with
 * one u32 per storage binding (its first element inside its bound window),
 * then the kernel's own fields; bindings 1.. are the storage arrays, every one
 * read_write. A kernel's tensors reach their storage through accessors
 * (`prelude`), so tensors that overlap in one buffer can share one binding
 * (`Slots`). Every declared binding is used ('auto' layouts drop unused ones
 * and the bind group would then not match).
 * Elementwise kernels take their linear id from a 2-D grid (gpu.ts `grid`).
 * Everything is float32: WGSL has no float64.
 */

export interface Kernel {
  key: string;
  wgsl: string;
}

/** Threads per workgroup of the elementwise kernels. */
export const WG = 256;

/** Items summed per workgroup by sumSquares' first stage (WG threads x SUMSQ_ITEMS each). */
export const SUMSQ_ITEMS = 16;

/** Rows per partial sum in normBackward's per-column reductions. */
export const NORM_CHUNK = 64;

/** The matmul tile: BM x BN of C per workgroup of (BM/TM) x (BN/TN) threads, BK deep. */
export const MM = { BM: 64, BN: 64, BK: 16, TM: 4, TN: 4 } as const;

type Elem = 'f32' | 'i32';
type Field = 'u32' | 'f32' | 'i32';

const cache = new Map<string, Kernel>();
function kernel(key: string, make: () => string): Kernel {
  let k = cache.get(key);
  if (!k) {
    k = { key, wgsl: make() };
    cache.set(key, k);
  }
  return k;
}

/**
 * Which physical binding each of a kernel's tensors (its logical buffers, in order) goes
 * through: Dawn refuses two writable bindings of overlapping ranges of one buffer in a
 * dispatch, so the engine binds overlapping tensors (out = a, slices of one buffer) as one
 * window and each tensor reaches its elements through that window at its own offset.
 * E.g. [0, 0, 1]: the first two tensors share binding 0. Part of every pipeline key.
 */
export type Slots = readonly number[];

/**
 * The uniform struct, the storage bindings and one accessor pair per tensor:
 * NAME_at(i) / NAME_set(i, v) for element i of the tensor (from its first element).
 * U: o_bufK per physical binding (gpu.ts), d_NAME per tensor (its first element
 * from the physical binding's first, set by the engine), then the op's fields.
 */
function prelude(bufs: [string, Elem][], fields: [string, Field][], slots: Slots): string {
  if (slots.length !== bufs.length) throw new Error(`webgpu ops: ${bufs.length} tensors, ${slots.length} slots`);
  const phys: Elem[] = [];
  bufs.forEach(([n, t], i) => {
    const k = slots[i];
    if (!(Number.isInteger(k) && k >= 0 && k <= phys.length)) throw new Error(`webgpu ops: bad slots [${slots.join(', ')}]`);
    if (k === phys.length) phys.push(t);
    else if (phys[k] !== t) throw new Error(`webgpu ops: ${n} (${t}) shares a binding with ${phys[k]} tensors`);
  });
  const members = [
    ...phys.map((_, k) => `  o_buf${k}: u32,`),
    ...bufs.map(([n]) => `  d_${n}: u32,`),
    ...fields.map(([n, t]) => `  ${n}: ${t},`),
  ];
  return [
    `struct U {\n${members.join('\n')}\n}`,
    '@group(0) @binding(0) var<uniform> u: U;',
    ...phys.map((t, k) => `@group(0) @binding(${k + 1}) var<storage, read_write> buf${k}: array<${t}>;`),
    ...bufs.map(([n, t], i) => {
      const at = `u.o_buf${slots[i]} + u.d_${n} + i`;
      return `fn ${n}_at(i: u32) -> ${t} { return buf${slots[i]}[${at}]; }\nfn ${n}_set(i: u32, v: ${t}) { buf${slots[i]}[${at}] = v; }`;
    }),
    '',
  ].join('\n');
}

/** The pipeline key of a kernel variant: its name and its slots. */
const keyOf = (name: string, slots: Slots): string => `${name}@${slots.join('.')}`;

/** Entry point of an elementwise kernel: `i` is the linear thread id, threads at or past `count` return. */
function elementwise(count: string, body: string): string {
  return `@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * ${WG}u;
  if (i >= ${count}) { return; }
${body}
}
`;
}

/**
 * A workgroup-wide sum over `wg` threads (a fixed tree, so the same inputs give
 * the same bits every run); ends with a barrier, so it can be called again at once.
 * Call from uniform control flow only (it has barriers).
 */
function wgReduce(wg: number, name: string, op: (a: string, b: string) => string): string {
  return `fn ${name}(li: u32, v: f32) -> f32 {
  red[li] = v;
  workgroupBarrier();
  for (var s = ${wg / 2}u; s > 0u; s = s >> 1u) {
    if (li < s) { red[li] = ${op('red[li]', 'red[li + s]')}; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}
`;
}

function reductions(wg: number): string {
  return `var<workgroup> red: array<f32, ${wg}>;
${wgReduce(wg, 'wgSum', (a, b) => `${a} + ${b}`)}
${wgReduce(wg, 'wgMax', (a, b) => `max(${a}, ${b})`)}`;
}

/** One workgroup per row: `r` is the row, workgroups past `rows` return (uniformly: r is the workgroup's id). */
function perRow(wg: number, body: string): string {
  return `@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let r = wid.x + wid.y * nwg.x;
  if (r >= u.rows) { return; }
${body}
}
`;
}

/** Threads per row of the one-workgroup-per-row kernels: fewer for short rows. */
export function rowThreads(dim: number): number {
  return dim >= 1024 ? 256 : dim >= 256 ? 128 : 64;
}

// ---- embed / embedBackward ------------------------------------------------------

const F = (n: string): [string, Elem] => [n, 'f32'];
const I = (n: string): [string, Elem] => [n, 'i32'];
const UF = (n: string): [string, Field] => [n, 'u32'];

/** out[r, j] = table[tokens[r], j]; a token outside the table gives a zero row (a GPU cannot throw; the model validates ids). */
export function embedKernel(slots: Slots): Kernel {
  return kernel(keyOf('embed', slots), () =>
    prelude([F('out'), F('table'), I('tokens')], [UF('n'), UF('dim'), UF('vocab')], slots) +
      elementwise(
        'u.n',
        `  let r = i / u.dim;
  let j = i - r * u.dim;
  let t = tokens_at(r);
  var v = 0.0;
  if (t >= 0 && u32(t) < u.vocab) { v = table_at(u32(t) * u.dim + j); }
  out_set(i, v);`,
      ),
  );
}

/**
 * dTable[tokens[r], j] += dOut[r, j]: one thread per column, rows in order, so
 * repeated tokens add in the native engine's order (deterministic, no atomics).
 */
export function embedBackwardKernel(slots: Slots): Kernel {
  return kernel(keyOf('embedBackward', slots), () =>
    prelude([F('dTable'), F('dOut'), I('tokens')], [UF('rows'), UF('dim'), UF('vocab')], slots) +
      elementwise(
        'u.dim',
        `  for (var r = 0u; r < u.rows; r++) {
    let t = tokens_at(r);
    if (t >= 0 && u32(t) < u.vocab) {
      let d = u32(t) * u.dim + i;
      dTable_set(d, dTable_at(d) + dOut_at(r * u.dim + i));
    }
  }`,
      ),
  );
}

// ---- norm / normBackward --------------------------------------------------------

/** Row statistics as native rowStats: mean (0 for RMSNorm) first, then sum (x - mean)^2: two passes, as native. */
function rowStats(layer: boolean, wg: number): string {
  return `  let xb = r * u.dim;
  var mean = 0.0;
${
  layer
    ? `  var sx = 0.0;
  for (var j = li; j < u.dim; j += ${wg}u) { sx += x_at(xb + j); }
  mean = wgSum(li, sx) / f32(u.dim);`
    : ''
}
  var ss = 0.0;
  for (var j = li; j < u.dim; j += ${wg}u) { let c = x_at(xb + j) - mean; ss += c * c; }
  let rstd = 1.0 / sqrt(wgSum(li, ss) / f32(u.dim) + u.eps);`;
}

const NORM_FIELDS: [string, Field][] = [UF('rows'), UF('dim'), ['eps', 'f32']];

/** out = (x - mean) * rstd * w (+ b): one workgroup per row; each thread writes only what it read, so out may be x. */
export function normKernel(layer: boolean, wg: number, slots: Slots): Kernel {
  return kernel(keyOf(`norm.${layer ? 'layer' : 'rms'}.wg${wg}`, slots), () =>
    prelude(layer ? [F('out'), F('x'), F('w'), F('b')] : [F('out'), F('x'), F('w')], NORM_FIELDS, slots) +
      reductions(wg) +
      perRow(
        wg,
        `${rowStats(layer, wg)}
  for (var j = li; j < u.dim; j += ${wg}u) {
    out_set(xb + j, (x_at(xb + j) - mean) * rstd * w_at(j)${layer ? ' + b_at(j)' : ''});
  }`,
      ),
  );
}

/**
 * normBackward, stage 1 of 4: per row, stats[r] = (mean, rstd, mean(g) or 0, mean(g xh)) with
 * g = dOut * w, xh = (x - mean) * rstd. Nothing is written to dx yet, so dx may alias dOut.
 */
export function normStatsKernel(layer: boolean, wg: number, slots: Slots): Kernel {
  return kernel(keyOf(`normStats.${layer ? 'layer' : 'rms'}.wg${wg}`, slots), () =>
    prelude([F('dOut'), F('x'), F('w'), F('stats')], NORM_FIELDS, slots) +
      reductions(wg) +
      perRow(
        wg,
        `${rowStats(layer, wg)}
  var sg = 0.0;
  var sgx = 0.0;
  for (var j = li; j < u.dim; j += ${wg}u) {
    let xh = (x_at(xb + j) - mean) * rstd;
    let g = dOut_at(xb + j) * w_at(j);
    sg += g;
    sgx += g * xh;
  }
  let mg = ${layer ? 'wgSum(li, sg) / f32(u.dim)' : '0.0'};
  let mgx = wgSum(li, sgx) / f32(u.dim);
  if (li == 0u) {
    stats_set(4u * r, mean);
    stats_set(4u * r + 1u, rstd);
    stats_set(4u * r + 2u, mg);
    stats_set(4u * r + 3u, mgx);
  }`,
      ),
  );
}

/**
 * normBackward, stage 2: partial column sums of dOut * xh (and of dOut for LayerNorm) over
 * NORM_CHUNK rows each, one thread per (column, chunk), rows in order: part is
 * [chunks, dim] for dw, then [chunks, dim] for db. A fixed order, so deterministic.
 */
export function normPartialsKernel(layer: boolean, slots: Slots): Kernel {
  return kernel(keyOf(`normPartials.${layer ? 'layer' : 'rms'}.chunk${NORM_CHUNK}`, slots), () =>
    prelude([F('dOut'), F('x'), F('stats'), F('part')], [UF('rows'), UF('dim'), UF('chunks')], slots) +
      elementwise(
        'u.dim * u.chunks',
        `  let c = i / u.dim;
  let j = i - c * u.dim;
  let r1 = min(u.rows, (c + 1u) * ${NORM_CHUNK}u);
  var pw = 0.0;
  var pb = 0.0;
  for (var r = c * ${NORM_CHUNK}u; r < r1; r++) {
    let dy = dOut_at(r * u.dim + j);
    pw += dy * (x_at(r * u.dim + j) - stats_at(4u * r)) * stats_at(4u * r + 1u);
    pb += dy;
  }
  part_set(i, pw);
${layer ? '  part_set(u.chunks * u.dim + i, pb);' : ''}`,
      ),
  );
}

/** normBackward, stage 3: dw[j] += the chunks' partials in chunk order (db too for LayerNorm); one thread per column. */
export function normColumnsKernel(layer: boolean, slots: Slots): Kernel {
  return kernel(keyOf(`normColumns.${layer ? 'layer' : 'rms'}`, slots), () =>
    prelude(layer ? [F('part'), F('dw'), F('db')] : [F('part'), F('dw')], [UF('dim'), UF('chunks')], slots) +
      elementwise(
        'u.dim',
        `  var sw = 0.0;
  var sb = 0.0;
  for (var c = 0u; c < u.chunks; c++) {
    sw += part_at(c * u.dim + i);
${layer ? '    sb += part_at((u.chunks + c) * u.dim + i);' : ''}
  }
  dw_set(i, dw_at(i) + sw);
${layer ? '  db_set(i, db_at(i) + sb);' : ''}`,
      ),
  );
}

/** normBackward, stage 4: dx += rstd * (dOut * w - mean(g) - xh * mean(g xh)), elementwise (dx ADDS, as native). */
export function normDxKernel(slots: Slots): Kernel {
  return kernel(keyOf('normDx', slots), () =>
    prelude([F('dx'), F('dOut'), F('x'), F('w'), F('stats')], [UF('n'), UF('dim')], slots) +
      elementwise(
        'u.n',
        `  let r = i / u.dim;
  let j = i - r * u.dim;
  let rstd = stats_at(4u * r + 1u);
  let xh = (x_at(i) - stats_at(4u * r)) * rstd;
  dx_set(i, dx_at(i) + rstd * (dOut_at(i) * w_at(j) - stats_at(4u * r + 2u) - xh * stats_at(4u * r + 3u)));`,
      ),
  );
}

// ---- matmul ----------------------------------------------------------------------

/**
 * C (+)= op(A) op(B), C m x n, op(A) m x k, op(B) k x n; A stored k x m when transA,
 * B stored n x k when transB. Each workgroup computes a BM x BN tile of C from
 * BK-deep tiles of A and B staged in workgroup memory; each thread a TM x TN
 * micro-tile strided by the thread grid (rows ty + TY*r, columns tx + TX*c), so
 * that the tile reads are broadcast (A) or consecutive (B) and the stores to C
 * coalesce. Tiles load with the index that runs along memory fastest across
 * threads, whichever way the operand is stored. Bounds-checked loads (zero
 * outside) and stores handle any m, n, k; k = 0 gives C = 0 (or C unchanged).
 * Without accumulate C is never read (it may hold NaN).
 */
export function matmulKernel(transA: boolean, transB: boolean, accumulate: boolean, slots: Slots): Kernel {
  const { BM, BN, BK, TM, TN } = MM;
  const TX = BN / TN;
  const TY = BM / TM;
  const threads = TX * TY;
  const name = `matmul.${transA ? 'T' : 'N'}${transB ? 'T' : 'N'}${accumulate ? '.acc' : ''}.${BM}x${BN}x${BK}.${TM}x${TN}`;
  return kernel(keyOf(name, slots), () => {
    const loadsA = (BM * BK) / threads;
    const loadsB = (BK * BN) / threads;
    const decl: string[] = [];
    for (let r = 0; r < TM; r++) for (let c = 0; c < TN; c++) decl.push(`  var acc${r}_${c} = 0.0;`);
    const loadA: string[] = [];
    for (let l = 0; l < loadsA; l++) {
      // transA: A is k x m, consecutive threads take consecutive i (along memory); else consecutive kk.
      loadA.push(`    {
      let e = li + ${l * threads}u;
      let ii = ${transA ? `e % ${BM}u` : `e / ${BK}u`};
      let kk = ${transA ? `e / ${BM}u` : `e % ${BK}u`};
      let gi = m0 + ii;
      let gk = k0 + kk;
      var v = 0.0;
      if (gi < u.m && gk < u.k) { v = a_at(${transA ? 'gk * u.m + gi' : 'gi * u.k + gk'}); }
      tileA[kk * ${BM}u + ii] = v;
    }`);
    }
    const loadB: string[] = [];
    for (let l = 0; l < loadsB; l++) {
      // transB: B is n x k, consecutive threads take consecutive kk; else consecutive j.
      loadB.push(`    {
      let e = li + ${l * threads}u;
      let jj = ${transB ? `e / ${BK}u` : `e % ${BN}u`};
      let kk = ${transB ? `e % ${BK}u` : `e / ${BN}u`};
      let gj = n0 + jj;
      let gk = k0 + kk;
      var v = 0.0;
      if (gj < u.n && gk < u.k) { v = b_at(${transB ? 'gj * u.k + gk' : 'gk * u.n + gj'}); }
      tileB[kk * ${BN}u + jj] = v;
    }`);
    }
    const inner: string[] = [];
    for (let r = 0; r < TM; r++) inner.push(`      let a${r} = tileA[kk * ${BM}u + ty + ${r * TY}u];`);
    for (let c = 0; c < TN; c++) inner.push(`      let b${c} = tileB[kk * ${BN}u + tx + ${c * TX}u];`);
    for (let r = 0; r < TM; r++) for (let c = 0; c < TN; c++) inner.push(`      acc${r}_${c} = fma(a${r}, b${c}, acc${r}_${c});`);
    const store: string[] = [];
    for (let r = 0; r < TM; r++)
      for (let c = 0; c < TN; c++)
        store.push(`  {
    let gi = m0 + ty + ${r * TY}u;
    let gj = n0 + tx + ${c * TX}u;
    if (gi < u.m && gj < u.n) {
      let o = gi * u.n + gj;
      c_set(o, ${accumulate ? `c_at(o) + acc${r}_${c}` : `acc${r}_${c}`});
    }
  }`);
    return (
      prelude([F('c'), F('a'), F('b')], [UF('m'), UF('n'), UF('k')], slots) +
      `var<workgroup> tileA: array<f32, ${BM * BK}>;
var<workgroup> tileB: array<f32, ${BK * BN}>;

@compute @workgroup_size(${TX}, ${TY})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let tx = lid.x;
  let ty = lid.y;
  let m0 = wid.y * ${BM}u;
  let n0 = wid.x * ${BN}u;
${decl.join('\n')}
  let tiles = (u.k + ${BK - 1}u) / ${BK}u;
  for (var t = 0u; t < tiles; t++) {
    let k0 = t * ${BK}u;
${loadA.join('\n')}
${loadB.join('\n')}
    workgroupBarrier();
    for (var kk = 0u; kk < ${BK}u; kk++) {
${inner.join('\n')}
    }
    workgroupBarrier();
  }
${store.join('\n')}
}
`
    );
  });
}

// ---- rope -----------------------------------------------------------------------

/** Half-split pairs (j, j + half) of each head rotated by the row's angle; sign -1 is the inverse. One thread per pair. */
export function ropeKernel(slots: Slots): Kernel {
  return kernel(keyOf('rope', slots), () =>
    prelude([F('x'), F('cos'), F('sin')], [UF('n'), UF('heads'), UF('half'), ['sign', 'f32']], slots) +
      elementwise(
        'u.n',
        `  let rh = i / u.half;
  let j = i - rh * u.half;
  let row = rh / u.heads;
  let ia = rh * 2u * u.half + j;
  let ib = ia + u.half;
  let c = cos_at(row * u.half + j);
  let s = u.sign * sin_at(row * u.half + j);
  let xa = x_at(ia);
  let xb = x_at(ib);
  x_set(ia, xa * c - xb * s);
  x_set(ib, xb * c + xa * s);`,
      ),
  );
}

// ---- silu / siluBackward ------------------------------------------------------

// exp's argument is capped at 88 (e^88 < FLT_MAX): WGSL leaves an overflowing exp undefined.

/** out = u / (1 + e^-u); out may be u (each thread reads, then writes, its own element). */
export function siluKernel(slots: Slots): Kernel {
  return kernel(keyOf('silu', slots), () =>
    prelude([F('out'), F('x')], [UF('n')], slots) +
      elementwise(
        'u.n',
        `  let v = x_at(i);
  out_set(i, v / (1.0 + exp(min(-v, 88.0))));`,
      ),
  );
}

/** du = dOut * s * (1 + u (1 - s)), s = sigmoid(u); du may be dOut. */
export function siluBackwardKernel(slots: Slots): Kernel {
  return kernel(keyOf('siluBackward', slots), () =>
    prelude([F('du'), F('dOut'), F('x')], [UF('n')], slots) +
      elementwise(
        'u.n',
        `  let v = x_at(i);
  let s = 1.0 / (1.0 + exp(min(-v, 88.0)));
  du_set(i, dOut_at(i) * s * (1.0 + v * (1.0 - s)));`,
      ),
  );
}

// ---- add ------------------------------------------------------------------------

/** out = a + b; out may be a or b (elementwise: each thread reads before it writes). */
export function addKernel(slots: Slots): Kernel {
  return kernel(keyOf('add', slots), () => prelude([F('out'), F('a'), F('b')], [UF('n')], slots) + elementwise('u.n', '  out_set(i, a_at(i) + b_at(i));'));
}

// ---- crossEntropy ---------------------------------------------------------------

/**
 * Stage 1, one workgroup per row: the row's loss, lse - logit[target] = (max - logit[target]) + log(sum e^(l - max)),
 * into rowLoss[r] (0 for a row without a target, and for a target past the vocabulary: the
 * native engine throws there, a GPU cannot); with `grad`, the row is overwritten by
 * gradScale * (softmax - onehot) (zeros without a target). logit[target] is read before the
 * first barrier, so before any thread overwrites the row.
 */
export function crossEntropyKernel(grad: boolean, wg: number, slots: Slots): Kernel {
  return kernel(keyOf(`crossEntropy${grad ? '.grad' : ''}.wg${wg}`, slots), () =>
    prelude([F('logits'), I('targets'), F('rowLoss')], [UF('rows'), UF('vocab'), ['scale', 'f32']], slots) +
      reductions(wg) +
      perRow(
        wg,
        `  let base = r * u.vocab;
  let t = targets_at(r);
  let valid = t >= 0 && u32(t) < u.vocab;
  let ti = select(0u, u32(t), valid);
  let lt = logits_at(base + ti);
  var m = -3.402823e38;
  for (var j = li; j < u.vocab; j += ${wg}u) { m = max(m, logits_at(base + j)); }
  m = wgMax(li, m);
  var s = 0.0;
  for (var j = li; j < u.vocab; j += ${wg}u) { s += exp(logits_at(base + j) - m); }
  s = wgSum(li, s);
  if (li == 0u) { rowLoss_set(r, select(0.0, (m - lt) + log(s), valid)); }
${
  grad
    ? `  let inv = u.scale / s;
  for (var j = li; j < u.vocab; j += ${wg}u) {
    var g = 0.0;
    if (valid) {
      g = exp(logits_at(base + j) - m) * inv;
      if (j == ti) { g -= u.scale; }
    }
    logits_set(base + j, g);
  }`
    : ''
}`,
      ),
  );
}

/**
 * One workgroup sums src[0, n) in a fixed order (each thread a strided run, then a tree):
 * dst[0] += the sum (`add`: crossEntropy's loss) or dst[0] = the sum (sumSquares' second stage).
 */
export function sumKernel(add: boolean, slots: Slots): Kernel {
  return kernel(keyOf(`sum.${add ? 'add' : 'set'}.wg${WG}`, slots), () =>
    prelude([F('dst'), F('src')], [UF('n')], slots) +
      reductions(WG) +
      `@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32) {
  var acc = 0.0;
  for (var i = li; i < u.n; i += ${WG}u) { acc += src_at(i); }
  let total = wgSum(li, acc);
  if (li == 0u) { dst_set(0u, ${add ? 'dst_at(0u) + total' : 'total'}); }
}
`,
  );
}

// ---- sumSquares, adamw ------------------------------------------------------------

/**
 * sumSquares, stage 1: workgroup g sums x^2 over its WG * SUMSQ_ITEMS elements (coalesced strided runs, then a tree)
 * into part[g]; stage 2 is sumKernel(false). Float32 throughout (WGSL has no float64; native sums in float64), but
 * the two-stage tree keeps the rounding error near log2(n) ulps rather than the n ulps of one running sum.
 */
export function sumSquaresKernel(slots: Slots): Kernel {
  return kernel(keyOf(`sumSquares.wg${WG}.items${SUMSQ_ITEMS}`, slots), () =>
    prelude([F('part'), F('x')], [UF('n')], slots) +
      reductions(WG) +
      `@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let g = wid.x + wid.y * nwg.x;
  let base = g * ${WG * SUMSQ_ITEMS}u;
  var acc = 0.0;
  for (var r = 0u; r < ${SUMSQ_ITEMS}u; r++) {
    let i = base + r * ${WG}u + li;
    if (i < u.n) { let v = x_at(i); acc += v * v; }
  }
  let total = wgSum(li, acc);
  if (li == 0u && base < u.n) { part_set(g, total); }
}
`,
  );
}

/**
 * One AdamW step, native engine_impl.h's expression in its order, but in float32 (WGSL has no
 * float64): so identical on every rank on the same adapter, and within float32 rounding of
 * the native engine's float64. 1 - beta1 and 1 - beta2 come from the host (c1, c2), rounded once.
 * (Unlike native, the WGSL compiler may contract a * b + c into an FMA.)
 */
export function adamwKernel(slots: Slots): Kernel {
  const hp = ['lr', 'b1', 'b2', 'eps', 'decay', 'bc1', 'bc2', 'gs', 'c1', 'c2'].map((n): [string, Field] => [n, 'f32']);
  return kernel(keyOf('adamw', slots), () =>
    prelude([F('p'), F('g'), F('m'), F('v')], [UF('n'), UF('scaled'), ...hp], slots) +
      elementwise(
        'u.n',
        `  var gi = g_at(i);
  if (u.scaled != 0u) { gi = gi * u.gs; }
  let mi = u.b1 * m_at(i) + u.c1 * gi;
  let vi = u.b2 * v_at(i) + u.c2 * gi * gi;
  m_set(i, mi);
  v_set(i, vi);
  var pi = p_at(i);
  pi = pi - u.decay * pi;
  pi = pi - (u.lr * (mi / u.bc1)) / (sqrt(vi / u.bc2) + u.eps);
  p_set(i, pi);`,
      ),
  );
}

// ---- zero -------------------------------------------------------------------------

/** t = 0; a dispatch rather than clearBuffer, which GpuContext does not record and which would end the compute pass. */
export function zeroKernel(slots: Slots): Kernel {
  return kernel(keyOf('zero', slots), () => prelude([F('t')], [UF('n')], slots) + elementwise('u.n', '  t_set(i, 0.0);'));
}
