/**
 * A small reverse-mode automatic differentiation tape in float64, for test
 * oracles only. Clarity over speed: every op allocates, loops are plain.
 *
 * A node holds a value (Float64Array, row-major), its shape, its parents and a
 * backward closure that adds the node's gradient into its parents' gradients.
 * `backward(out)` seeds d(out)/d(out) = 1 (out must have one element) and walks
 * the nodes reachable from `out` in reverse creation order, which is a
 * topological order because a node is always created after its parents.
 *
 * Binary elementwise ops broadcast numpy-style: shapes are right-aligned and
 * each dimension must match or be 1 (so [n, d] with [d], [n, 1] or [1, 1]).
 */

let nextId = 0;

export class Node {
  readonly id = nextId++;
  /** Accumulated d(output)/d(this); allocated by `backward` for nodes that need it. */
  grad: Float64Array | null = null;
  constructor(
    readonly value: Float64Array,
    readonly shape: number[],
    readonly parents: Node[],
    /** Adds this node's gradient (`g`) into the parents' `grad`s. */
    readonly backwardFn: ((g: Float64Array) => void) | null,
    /** Whether any gradient flows to or through this node (false for constants). */
    readonly needsGrad: boolean,
  ) {
    if (value.length !== sizeOf(shape)) throw new Error(`autodiff: value of ${value.length} elements for shape [${shape}]`);
  }
}

function sizeOf(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function lastDim(shape: number[]): number {
  return shape[shape.length - 1];
}

/** A leaf whose gradient is wanted (a parameter or an input under test). */
export function param(value: Float64Array, shape: number[]): Node {
  return new Node(value, shape, [], null, true);
}

/** A leaf without a gradient (tables, masks, one-hots). */
export function constant(value: Float64Array | number[], shape: number[]): Node {
  return new Node(Float64Array.from(value), shape, [], null, false);
}

export function scalar(c: number): Node {
  return constant([c], [1]);
}

/** Makes a node from parents, computing `needsGrad`; `back` is skipped when no parent needs a gradient. */
function op(value: Float64Array, shape: number[], parents: Node[], back: (g: Float64Array) => void): Node {
  const needs = parents.some((p) => p.needsGrad);
  return new Node(value, shape, parents, needs ? back : null, needs);
}

/** Adds `g` into `n.grad` when n wants a gradient. */
function accumulate(n: Node, g: Float64Array): void {
  if (!n.needsGrad) return;
  if (!n.grad) n.grad = new Float64Array(n.value.length);
  for (let i = 0; i < g.length; i++) n.grad[i] += g[i];
}

/** Runs reverse mode from a single-element node; afterwards every reachable node that needs one has `.grad`. */
export function backward(out: Node): void {
  if (out.value.length !== 1) throw new Error(`autodiff: backward needs a single-element output, got [${out.shape}]`);
  const seen = new Set<Node>();
  const order: Node[] = [];
  const stack: Node[] = [out];
  while (stack.length) {
    const n = stack.pop()!;
    if (seen.has(n) || !n.needsGrad) continue;
    seen.add(n);
    order.push(n);
    for (const p of n.parents) stack.push(p);
  }
  order.sort((a, b) => b.id - a.id);
  for (const n of order) n.grad = null;
  out.grad = Float64Array.of(1);
  for (const n of order) if (n.backwardFn && n.grad) n.backwardFn(n.grad);
}

// ---------------------------------------------------------------- broadcasting

function broadcastShape(a: number[], b: number[]): number[] {
  const r = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < r; i++) {
    const da = a[a.length - r + i] ?? 1;
    const db = b[b.length - r + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) throw new Error(`autodiff: cannot broadcast [${a}] with [${b}]`);
    out.push(Math.max(da, db));
  }
  return out;
}

/** For each flat index of `out`, the flat index of the broadcast input of shape `shape`. */
function broadcastIndex(shape: number[], out: number[]): Int32Array {
  const n = sizeOf(out);
  const idx = new Int32Array(n);
  const r = out.length;
  const padded = [...Array(r - shape.length).fill(1), ...shape];
  const stride = new Array<number>(r);
  let s = 1;
  for (let d = r - 1; d >= 0; d--) {
    stride[d] = padded[d] === 1 ? 0 : s;
    s *= padded[d];
  }
  for (let i = 0; i < n; i++) {
    let rem = i;
    let j = 0;
    for (let d = r - 1; d >= 0; d--) {
      const c = rem % out[d];
      rem = (rem - c) / out[d];
      j += c * stride[d];
    }
    idx[i] = j;
  }
  return idx;
}

/** out = f(a, b) elementwise with broadcasting; dfa, dfb give the partial derivatives at (a, b, out). */
function binary(
  a: Node,
  b: Node,
  f: (x: number, y: number) => number,
  dfa: (x: number, y: number, z: number) => number,
  dfb: (x: number, y: number, z: number) => number,
): Node {
  const shape = broadcastShape(a.shape, b.shape);
  const ia = broadcastIndex(a.shape, shape);
  const ib = broadcastIndex(b.shape, shape);
  const v = new Float64Array(ia.length);
  for (let i = 0; i < v.length; i++) v[i] = f(a.value[ia[i]], b.value[ib[i]]);
  return op(v, shape, [a, b], (g) => {
    const ga = new Float64Array(a.value.length);
    const gb = new Float64Array(b.value.length);
    for (let i = 0; i < g.length; i++) {
      const x = a.value[ia[i]];
      const y = b.value[ib[i]];
      ga[ia[i]] += g[i] * dfa(x, y, v[i]);
      gb[ib[i]] += g[i] * dfb(x, y, v[i]);
    }
    accumulate(a, ga);
    accumulate(b, gb);
  });
}

export const add = (a: Node, b: Node): Node => binary(a, b, (x, y) => x + y, () => 1, () => 1);
export const sub = (a: Node, b: Node): Node => binary(a, b, (x, y) => x - y, () => 1, () => -1);
export const mul = (a: Node, b: Node): Node => binary(a, b, (x, y) => x * y, (_x, y) => y, (x) => x);
export const div = (a: Node, b: Node): Node =>
  binary(a, b, (x, y) => x / y, (_x, y) => 1 / y, (x, y) => -x / (y * y));

// ---------------------------------------------------------------- unary

/** out = f(a) elementwise; df gives f' at (a, out). */
function unary(a: Node, f: (x: number) => number, df: (x: number, y: number) => number): Node {
  const v = a.value.map(f);
  return op(v, a.shape, [a], (g) => {
    const ga = new Float64Array(g.length);
    for (let i = 0; i < g.length; i++) ga[i] = g[i] * df(a.value[i], v[i]);
    accumulate(a, ga);
  });
}

export const neg = (a: Node): Node => unary(a, (x) => -x, () => -1);
export const exp = (a: Node): Node => unary(a, Math.exp, (_x, y) => y);
export const log = (a: Node): Node => unary(a, Math.log, (x) => 1 / x);
export const sqrt = (a: Node): Node => unary(a, Math.sqrt, (_x, y) => 0.5 / y);
export const rsqrt = (a: Node): Node => unary(a, (x) => 1 / Math.sqrt(x), (x, y) => (-0.5 * y) / x);
export const sigmoid = (a: Node): Node => unary(a, (x) => 1 / (1 + Math.exp(-x)), (_x, y) => y * (1 - y));
export const scale = (a: Node, c: number): Node => unary(a, (x) => x * c, () => c);

// ---------------------------------------------------------------- reductions and shape

/** Sum over the last axis, keeping it with size 1: [..., c] -> [..., 1]. */
export function sumLast(a: Node): Node {
  const c = lastDim(a.shape);
  const rows = a.value.length / c;
  const v = new Float64Array(rows);
  for (let r = 0; r < rows; r++) for (let j = 0; j < c; j++) v[r] += a.value[r * c + j];
  return op(v, [...a.shape.slice(0, -1), 1], [a], (g) => {
    const ga = new Float64Array(a.value.length);
    for (let r = 0; r < rows; r++) for (let j = 0; j < c; j++) ga[r * c + j] = g[r];
    accumulate(a, ga);
  });
}

/** Mean over the last axis, keeping it with size 1. */
export function meanLast(a: Node): Node {
  return scale(sumLast(a), 1 / lastDim(a.shape));
}

/** Same values, new shape (same element count). */
export function reshape(a: Node, shape: number[]): Node {
  if (sizeOf(shape) !== a.value.length) throw new Error(`autodiff: cannot reshape [${a.shape}] to [${shape}]`);
  return op(a.value.slice(), shape, [a], (g) => accumulate(a, g));
}

/** Columns [start, end) of the last axis. */
export function sliceLast(a: Node, start: number, end: number): Node {
  const c = lastDim(a.shape);
  const w = end - start;
  if (start < 0 || end > c || w <= 0) throw new Error(`autodiff: slice [${start}, ${end}) of last axis ${c}`);
  const rows = a.value.length / c;
  const v = new Float64Array(rows * w);
  for (let r = 0; r < rows; r++) for (let j = 0; j < w; j++) v[r * w + j] = a.value[r * c + start + j];
  return op(v, [...a.shape.slice(0, -1), w], [a], (g) => {
    const ga = new Float64Array(a.value.length);
    for (let r = 0; r < rows; r++) for (let j = 0; j < w; j++) ga[r * c + start + j] = g[r * w + j];
    accumulate(a, ga);
  });
}

/** Concatenation along the last axis; all other dimensions must agree. */
export function concatLast(parts: Node[]): Node {
  const lead = parts[0].shape.slice(0, -1);
  const rows = sizeOf(lead);
  for (const p of parts) {
    if (p.shape.length !== lead.length + 1 || p.shape.slice(0, -1).some((d, i) => d !== lead[i])) {
      throw new Error(`autodiff: cannot concatenate [${p.shape}] with [${parts[0].shape}]`);
    }
  }
  const widths = parts.map((p) => lastDim(p.shape));
  const c = widths.reduce((a, b) => a + b, 0);
  const v = new Float64Array(rows * c);
  let off = 0;
  parts.forEach((p, k) => {
    const w = widths[k];
    for (let r = 0; r < rows; r++) for (let j = 0; j < w; j++) v[r * c + off + j] = p.value[r * w + j];
    off += w;
  });
  return op(v, [...lead, c], parts, (g) => {
    let o = 0;
    parts.forEach((p, k) => {
      const w = widths[k];
      const gp = new Float64Array(rows * w);
      for (let r = 0; r < rows; r++) for (let j = 0; j < w; j++) gp[r * w + j] = g[r * c + o + j];
      accumulate(p, gp);
      o += w;
    });
  });
}

/** Rows of a 2-D table: out[i, :] = table[idx[i], :] (an embedding lookup). */
export function gatherRows(table: Node, idx: Int32Array): Node {
  if (table.shape.length !== 2) throw new Error(`autodiff: gatherRows needs a 2-D table, got [${table.shape}]`);
  const [rowsT, c] = table.shape;
  const v = new Float64Array(idx.length * c);
  idx.forEach((r, i) => {
    if (!(r >= 0 && r < rowsT)) throw new Error(`autodiff: row ${r} out of range [0, ${rowsT})`);
    for (let j = 0; j < c; j++) v[i * c + j] = table.value[r * c + j];
  });
  return op(v, [idx.length, c], [table], (g) => {
    const gt = new Float64Array(table.value.length);
    idx.forEach((r, i) => {
      for (let j = 0; j < c; j++) gt[r * c + j] += g[i * c + j];
    });
    accumulate(table, gt);
  });
}

// ---------------------------------------------------------------- matmul

/** Raw 2-D product op(x) @ op(y), op = transpose when the flag is set; x is [xr, xc] and y is [yr, yc] as stored. */
function mm(x: Float64Array, xs: number[], tx: boolean, y: Float64Array, ys: number[], ty: boolean): Float64Array {
  const [m, k] = tx ? [xs[1], xs[0]] : xs;
  const [k2, n] = ty ? [ys[1], ys[0]] : ys;
  if (k !== k2) throw new Error(`autodiff: matmul inner dimensions ${k} and ${k2} differ`);
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let t = 0; t < k; t++) {
        const xv = tx ? x[t * xs[1] + i] : x[i * xs[1] + t];
        const yv = ty ? y[j * ys[1] + t] : y[t * ys[1] + j];
        s += xv * yv;
      }
      out[i * n + j] = s;
    }
  }
  return out;
}

/** op(a) @ op(b) for 2-D a and b, with op = transpose where `transA` / `transB` is set. */
export function matmul(a: Node, b: Node, transA = false, transB = false): Node {
  if (a.shape.length !== 2 || b.shape.length !== 2) throw new Error(`autodiff: matmul of [${a.shape}] and [${b.shape}]`);
  const m = transA ? a.shape[1] : a.shape[0];
  const n = transB ? b.shape[0] : b.shape[1];
  const v = mm(a.value, a.shape, transA, b.value, b.shape, transB);
  const gs = [m, n];
  return op(v, gs, [a, b], (g) => {
    // C = op(A) op(B): d op(A) = G op(B)^T, d op(B) = op(A)^T G, transposed back where op transposed.
    if (a.needsGrad) accumulate(a, transA ? mm(b.value, b.shape, transB, g, gs, true) : mm(g, gs, false, b.value, b.shape, !transB));
    if (b.needsGrad) accumulate(b, transB ? mm(g, gs, true, a.value, a.shape, transA) : mm(a.value, a.shape, !transA, g, gs, false));
  });
}
