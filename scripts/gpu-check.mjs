#!/usr/bin/env node
// `npm run gpu:check`: the webgpu engine on a real GPU, in one prepared run.
//
// Runs from the compiled tree (dist/), the native addon (build/Release) and the
// few packages it imports (webgpu's dawn.node, zod), with whatever Node binary
// starts it: a machine without Node or network runs it as
//   ./node scripts/gpu-check.mjs --out report.json
// from a folder made by `npm run gpu:pack` (docs/launch.md says what it holds).
//
// It prints the adapter; checks the webgpu engine against the native CPU
// engine on attention (forward and backward) and on one training step;
// measures attention forward and backward TFLOP/s and training tokens/s at 16K
// and 64K tokens; and writes one JSON report. On a software adapter the sizes
// shrink to what such a device finishes, and every figure is labelled so.
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    out: { type: 'string', default: 'gpu-check.json' },
    adapter: { type: 'string' },
    'time-limit': { type: 'string', default: '270' },
    // The 20x target's other side: the same training rate on the native CPU engine (16K tokens only).
    cpu: { type: 'boolean', default: false },
  },
});
const started = performance.now();
const deadline = started + Number(args['time-limit']) * 1000;
const dist = new URL('../dist/', import.meta.url);
const load = (p) => import(new URL(p, dist).href);

const { openGpu, listAdapters } = await load('engine/webgpu/device.js');
const { createWebGPUEngine } = await load('engine/webgpu/engine.js');
const { createNativeEngine, nativeEngineUnavailable } = await load('engine/native.js');
const { loadNativeKernel } = await load('kernels/native.js');
const { referenceKernel } = await load('kernels/reference.js');
const { createModel } = await load('model/transformer.js');
const { initParams } = await load('model/params.js');
const { ringAttentionOp } = await load('attention/ring-attention.js');
const { slice } = await load('engine/types.js');

const report = {
  startedAt: new Date().toISOString(),
  host: { hostname: os.hostname(), cpus: os.cpus().length, cpu: os.cpus()[0]?.model, memoryGiB: os.totalmem() / 2 ** 30, node: process.version },
  adapters: [],
  adapter: null,
  checks: [],
  attention: [],
  training: [],
  notes: [],
  ok: false,
};
const say = (line) => process.stdout.write(`${line}\n`);
const save = () => writeFileSync(args.out, `${JSON.stringify(report, null, 2)}\n`);

function rand(n, seed) {
  // xorshift32 into [-1, 1): deterministic inputs without a dependency.
  let s = seed >>> 0 || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = (s >>> 0) / 2 ** 31 - 1;
  }
  return out;
}

function relErr(a, b) {
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / Math.max(den, 1e-30);
}

function check(name, err, tol = 1e-4) {
  const ok = Number.isFinite(err) && err <= tol;
  report.checks.push({ name, relErr: err, tolerance: tol, ok });
  say(`  ${ok ? 'ok  ' : 'FAIL'} ${name}: max rel err ${err.toExponential(2)} (tolerance ${tol})`);
  return ok;
}

const positions = (n) => Int32Array.from({ length: n }, (_, i) => i);

/** Engine tensors holding host arrays. */
function upload(engine, arrays) {
  const out = {};
  for (const [k, a] of Object.entries(arrays)) {
    out[k] = a instanceof Int32Array ? engine.ints(a.length) : engine.floats(a.length);
    if (a instanceof Int32Array) engine.writeInts(out[k], a);
    else engine.write(out[k], a);
  }
  return out;
}

const trainModel = (soft) => (soft ? modelCfg(64, 1, 2) : modelCfg(512, 4, 8));
function modelCfg(d, layers, heads) {
  return { vocabSize: 256, dModel: d, layers, heads, kvHeads: heads, ffnHidden: 4 * d, ffnChunk: 4096, norm: 'rms', tiedEmbeddings: true, ropeBase: 10000, initStd: 0.02 };
}
function shardOf(n, seed) {
  const r = rand(n + 1, seed);
  const toks = Int32Array.from(r, (x) => Math.floor((x + 1) * 128) & 255);
  return { tokens: toks.subarray(0, n), targets: toks.subarray(1, n + 1), positions: positions(n) };
}

/** Training tokens/s of one rank holding the whole sequence (a ring of one), `reps` timed steps after one warm-up. */
async function trainingRate(engine, cfg, n, reps, kernel) {
  const shard = shardOf(n, 13);
  const model = createModel(engine, cfg, { maxTokens: n });
  engine.write(model.params, initParams(cfg, 7).flat);
  const attn = ringAttentionOp({ ring: null, kernel, causal: true, heads: cfg.heads, kvHeads: cfg.kvHeads, headDim: cfg.dModel / cfg.heads, overlap: false, positionsOf: () => shard.positions });
  const one = async () => {
    engine.zero(model.grads);
    await model.step(shard, attn, 1 / n);
    await engine.read(slice(model.grads, 0, 1));
  };
  await one();
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) await one();
  const s = (performance.now() - t0) / reps / 1000;
  return { tokens: n, model: cfg, stepS: s, tokensPerSec: n / s };
}

if (args.cpu) {
  const missing = nativeEngineUnavailable();
  if (missing) {
    say(`gpu:check --cpu: the native engine is unavailable: ${missing}`);
    process.exit(2);
  }
  const threads = os.cpus().length;
  const engine = createNativeEngine({ threads });
  const kernel = await loadNativeKernel({ tileQ: 64, tileKV: 64, threads });
  const row = { ...(await trainingRate(engine, trainModel(false), 16384, 1, kernel)), engine: `native, ${threads} threads` };
  report.cpuBaseline = row;
  report.ok = true;
  say(`native CPU engine, ${threads} threads: 16384 tokens (d 512, 4 layers): ${row.tokensPerSec.toFixed(0)} tokens/s (${(row.stepS * 1e3).toFixed(0)} ms/step)`);
  report.elapsedS = (performance.now() - started) / 1000;
  save();
  process.exit(0);
}

try {
  report.adapters = await listAdapters();
  const want = args.adapter === undefined ? undefined : /^\d+$/.test(args.adapter) ? Number(args.adapter) : args.adapter;
  const gpu = await openGpu(want, { allowSoftware: true, what: 'gpu:check' });
  report.adapter = { ...gpu.adapter, limits: gpu.limits };
  const soft = gpu.adapter.software;
  say(`adapter ${gpu.adapter.index}: ${gpu.adapter.name} (${gpu.adapter.backend}, ${gpu.adapter.description})${soft ? ' — a SOFTWARE GPU: correctness only, timings are not GPU figures' : ''}`);
  const engine = createWebGPUEngine(gpu);
  const missing = nativeEngineUnavailable();

  // 1. Attention, forward and backward, against the native CPU kernel.
  say('checks against the native CPU engine:');
  {
    const n = soft ? 256 : 2048;
    const heads = 4;
    const kvHeads = 2;
    const hd = 64;
    const cpuKernel = missing ? referenceKernel : await loadNativeKernel({ tileQ: 64, tileKV: 64, threads: os.cpus().length });
    if (missing) report.notes.push(`native engine unavailable (${missing}); compared against the float64 reference kernel`);
    const q = rand(n * heads * hd, 1);
    const k = rand(n * kvHeads * hd, 2);
    const v = rand(n * kvHeads * hd, 3);
    const dO = rand(n * heads * hd, 4);
    const pos = positions(n);
    const base = { heads, kvHeads, headDim: hd, qLen: n, kvLen: n, q, k, v, qPos: pos, kvPos: pos, causal: true, scale: 1 / Math.sqrt(hd) };
    const ref = await cpuKernel.forward(base);
    const delta = new Float32Array(heads * n);
    for (let i = 0; i < n; i++) for (let h = 0; h < heads; h++) {
      let s = 0;
      for (let d = 0; d < hd; d++) s += dO[(i * heads + h) * hd + d] * ref.o[(i * heads + h) * hd + d];
      delta[h * n + i] = s;
    }
    const refG = { dq: new Float32Array(q.length), dk: new Float32Array(k.length), dv: new Float32Array(v.length) };
    await cpuKernel.backward(base, { dO, lse: ref.lse, delta }, refG);
    const op = ringAttentionOp({ ring: null, causal: true, heads, kvHeads, headDim: hd, overlap: false, positionsOf: () => pos });
    const t = upload(engine, { q, k, v, dO });
    const o = engine.floats(q.length);
    const lse = engine.floats(heads * n);
    const g = { dq: engine.floats(q.length), dk: engine.floats(k.length), dv: engine.floats(k.length) };
    await op.forward(engine, { q: t.q, k: t.k, v: t.v, o, lse });
    check(`attention forward o (causal, GQA 4/2, ${n} tokens)`, relErr(await engine.read(o), ref.o));
    await op.backward(engine, { q: t.q, k: t.k, v: t.v, o, lse }, t.dO, g);
    check('attention backward dq', relErr(await engine.read(g.dq), refG.dq));
    check('attention backward dk', relErr(await engine.read(g.dk), refG.dk));
    check('attention backward dv', relErr(await engine.read(g.dv), refG.dv));
  }

  // 2. One training step against the native engine.
  async function stepOn(eng, cfg, shard, kernel) {
    const model = createModel(eng, cfg, { maxTokens: shard.tokens.length });
    eng.write(model.params, initParams(cfg, 7).flat);
    eng.zero(model.grads);
    const attn = ringAttentionOp({ ring: null, kernel, causal: true, heads: cfg.heads, kvHeads: cfg.kvHeads, headDim: cfg.dModel / cfg.heads, overlap: false, positionsOf: () => shard.positions });
    const r = await model.step(shard, attn, 1 / shard.tokens.length);
    return { loss: r.lossSum / r.tokens, grads: Float32Array.from(await eng.read(model.grads)) };
  }
  if (!missing) {
    const cfg = modelCfg(128, 2, 4);
    const shard = shardOf(soft ? 128 : 1024, 11);
    const cpu = createNativeEngine({ threads: os.cpus().length });
    const kernel = await loadNativeKernel({ tileQ: 64, tileKV: 64, threads: os.cpus().length });
    const a = await stepOn(engine, cfg, shard);
    const b = await stepOn(cpu, cfg, shard, kernel);
    check(`training step loss (d 128, 2 layers, ${shard.tokens.length} tokens)`, Math.abs(a.loss - b.loss) / Math.abs(b.loss));
    check('training step gradients', relErr(a.grads, b.grads));
    cpu.dispose();
  } else report.notes.push('training-step check skipped: the native engine is unavailable here');

  // 3. Attention TFLOP/s: one block against itself, no mask (4 n^2 d h forward, 10 n^2 d h backward).
  say('attention rate:');
  // Each size's runs are predicted from the last one's (attention is quadratic in n); one that would pass the deadline is skipped and said so.
  let lastAttention = null;
  const attentionSizes = soft ? [512, 1024] : [16384, 65536];
  for (const n of attentionSizes) {
    const reps = soft || n > 16384 ? 1 : 3;
    if (lastAttention) {
      const predicted = (lastAttention.forwardS + lastAttention.backwardS) * (n / lastAttention.tokens) ** 2 * (reps + 1) * 1000;
      if (performance.now() + predicted > deadline) {
        report.notes.push(`attention at ${n} tokens skipped: predicted ${(predicted / 1000).toFixed(0)} s, past the time limit`);
        say(`  ${n} tokens skipped: predicted ${(predicted / 1000).toFixed(0)} s, past the time limit`);
        break;
      }
    }
    const heads = soft ? 4 : 16;
    const hd = soft ? 64 : 128;
    const pos = positions(n);
    const t = upload(engine, { q: rand(n * heads * hd, 5), k: rand(n * heads * hd, 6), v: rand(n * heads * hd, 7), dO: rand(n * heads * hd, 8) });
    const o = engine.floats(n * heads * hd);
    const lse = engine.floats(heads * n);
    const g = { dq: engine.floats(n * heads * hd), dk: engine.floats(n * heads * hd), dv: engine.floats(n * heads * hd) };
    const op = ringAttentionOp({ ring: null, causal: false, heads, kvHeads: heads, headDim: hd, overlap: false, positionsOf: () => pos });
    const time = async (fn, reps) => {
      await fn();
      const t0 = performance.now();
      for (let i = 0; i < reps; i++) await fn();
      return (performance.now() - t0) / reps / 1000;
    };
    const fwdS = await time(() => op.forward(engine, { q: t.q, k: t.k, v: t.v, o, lse }), reps);
    const bwdS = await time(() => op.backward(engine, { q: t.q, k: t.k, v: t.v, o, lse }, t.dO, g), reps);
    const flops = 4 * n * n * hd * heads;
    const row = { tokens: n, heads, headDim: hd, causal: false, forwardS: fwdS, backwardS: bwdS, forwardTflops: flops / fwdS / 1e12, backwardTflops: (2.5 * flops) / bwdS / 1e12, software: soft };
    report.attention.push(row);
    lastAttention = row;
    const r = (tflops) => (soft ? `${(tflops * 1e3).toFixed(2)} GFLOP/s` : `${tflops.toFixed(2)} TFLOP/s`);
    say(`  ${n} tokens, ${heads} heads x ${hd}: forward ${r(row.forwardTflops)} (${(fwdS * 1e3).toFixed(1)} ms), backward ${r(row.backwardTflops)} (${(bwdS * 1e3).toFixed(1)} ms)${soft ? ' [software GPU]' : ''}`);
    save();
  }

  // 4. Training tokens/s: one rank holding the whole sequence (a ring of one).
  say('training rate:');
  const trainCfg = trainModel(soft);
  let lastTraining = null;
  for (const n of soft ? [256, 512] : [16384, 65536]) {
    const reps = soft || n > 16384 ? 1 : 3;
    if (lastTraining) {
      // Linear terms grow by n, attention by n^2: the quadratic bound, built once, then reps + 1 steps.
      const predicted = lastTraining.stepS * (n / lastTraining.tokens) ** 2 * (reps + 1) * 1000;
      if (performance.now() + predicted > deadline) {
        report.notes.push(`training at ${n} tokens skipped: predicted up to ${(predicted / 1000).toFixed(0)} s, past the time limit`);
        say(`  ${n} tokens skipped: predicted up to ${(predicted / 1000).toFixed(0)} s, past the time limit`);
        break;
      }
    }
    const row = { ...(await trainingRate(engine, trainCfg, n, reps)), software: soft };
    lastTraining = row;
    report.training.push(row);
    say(`  ${n} tokens (d ${trainCfg.dModel}, ${trainCfg.layers} layers): ${row.tokensPerSec.toFixed(0)} tokens/s (${(row.stepS * 1e3).toFixed(0)} ms/step)${soft ? ' [software GPU]' : ''}`);
    save();
  }
  report.ok = report.checks.every((c) => c.ok);
  engine.dispose();
  gpu.close();
} catch (e) {
  report.error = e instanceof Error ? e.message.split('\n')[0] : String(e);
  say(`gpu:check: ${report.error}`);
}
report.elapsedS = (performance.now() - started) / 1000;
save();
say(`report: ${args.out} (${report.elapsedS.toFixed(0)} s)${report.ok ? '' : ' — NOT OK'}`);
process.exit(report.ok ? 0 : 1);
