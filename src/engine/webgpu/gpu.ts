/**
 * The one place that talks to a GPUDevice: storage buffers, compute dispatches
 * recorded into one command encoder, ordered host writes, asynchronous reads.
 * The webgpu engine (engine.ts) and its attention kernels (attention.ts) record
 * through it; nothing else holds a GPUDevice.
 *
 * WGSL conventions for every kernel dispatched here:
 *   @group(0) @binding(0) var<uniform> u: U;          the dispatch's uniforms
 *   @group(0) @binding(1..n) var<storage, read_write>  one per GpuBinding, in order
 * Every storage binding is read_write. WebGPU refuses two writable bindings of
 * one buffer whose ranges overlap, so tensors of one buffer that come within
 * 256 bytes of each other must be bound once (the engine's ops do this, see
 * engine.ts); `dispatch` throws, naming the kernel, when they are not.
 * A binding is the 256-byte-aligned window of its buffer that covers the
 * tensor; `U` therefore starts with one u32 per storage binding, in binding
 * order, the tensor's first element inside its window, followed by the
 * kernel's own fields (`uniforms`), each one 4-byte word.
 * Workgroup counts above 65535 go to y: kernels take their linear id as
 * gid.x + gid.y * num_workgroups.x * workgroupSize (see `grid`).
 */

/** A tensor on the device: a slice [offset, offset + length) of 4-byte elements of a buffer. */
export interface GpuBinding {
  buffer: GPUBuffer;
  offset: number;
  length: number;
}

/** A uniform word: a number is a u32; floats and signed ints say so. */
export type UniformWord = number | { f32: number } | { i32: number };

export interface Dispatch {
  /** Names the pipeline: one compile per distinct key (include every WGSL-shaping constant). */
  key: string;
  wgsl: string;
  bindings: GpuBinding[];
  uniforms?: UniformWord[];
  /** Workgroup counts; use `grid` for a count that may pass 65535. */
  workgroups: [number, number?, number?];
}

export interface GpuContext {
  readonly device: GPUDevice;
  /** A zeroed storage buffer of `elements` 4-byte values. */
  buffer(elements: number): GPUBuffer;
  /** Records one compute dispatch after everything recorded before it. */
  dispatch(d: Dispatch): void;
  /** Host -> device copy of `src` (copied now) into the binding, ordered after everything recorded before it. */
  write(dst: GpuBinding, src: Float32Array | Int32Array | Uint32Array): void;
  /** Device -> device copy of `length` elements, recorded in order. */
  copy(src: GpuBinding, dst: GpuBinding, length: number): void;
  /** Submits what was recorded, then resolves with the binding's bytes once the GPU has produced them. */
  read(src: GpuBinding): Promise<ArrayBuffer>;
  /** Submits what was recorded (without waiting). */
  submit(): void;
  /** Submits and waits until the GPU has finished everything submitted. */
  flush(): Promise<void>;
  /** Device errors raised so far (validation, out of memory), as one line each; empties the list. */
  takeErrors(): string[];
  destroy(): void;
}

export const MAX_WORKGROUPS = 65535;

/** Workgroup counts for `n` items at `perGroup` items per workgroup: x up to 65535, the rest in y. */
export function grid(n: number, perGroup: number): [number, number] {
  const groups = Math.max(1, Math.ceil(n / perGroup));
  if (groups <= MAX_WORKGROUPS) return [groups, 1];
  const y = Math.ceil(groups / MAX_WORKGROUPS);
  return [Math.ceil(groups / y), y];
}

const STORAGE = 0x80; // GPUBufferUsage.STORAGE
const COPY_SRC = 0x04;
const COPY_DST = 0x08;
const UNIFORM = 0x40;
const MAP_READ = 0x01;

export function createGpuContext(device: GPUDevice): GpuContext {
  const align = device.limits.minStorageBufferOffsetAlignment;
  const maxBinding = device.limits.maxStorageBufferBindingSize;
  const pipelines = new Map<string, GPUComputePipeline>();
  const errors: string[] = [];
  device.addEventListener?.('uncapturederror', (ev) => {
    errors.push(((ev as GPUUncapturedErrorEvent).error?.message ?? 'unknown GPU error').split('\n')[0]);
  });
  let encoder: GPUCommandEncoder | null = null;
  let pass: GPUComputePassEncoder | null = null;
  // Uniform buffers of the recorded, not yet finished dispatches: freed once their work is done.
  let pendingUniforms: GPUBuffer[] = [];

  const enc = (): GPUCommandEncoder => (encoder ??= device.createCommandEncoder());
  const endPass = (): void => {
    pass?.end();
    pass = null;
  };

  function pipeline(key: string, wgsl: string): GPUComputePipeline {
    let p = pipelines.get(key);
    if (!p) {
      const module = device.createShaderModule({ code: wgsl, label: key });
      p = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' }, label: key });
      pipelines.set(key, p);
    }
    return p;
  }

  /** The aligned window of the buffer that holds the binding, and the binding's first element in it. */
  function windowOf(b: GpuBinding): { offset: number; size: number; first: number } {
    const start = b.offset * 4;
    const offset = Math.floor(start / align) * align;
    const end = Math.max(start + b.length * 4, offset + 4);
    const size = Math.min(end, b.buffer.size) - offset;
    if (size > maxBinding) {
      throw new RangeError(`webgpu: a tensor of ${b.length * 4} bytes passes this adapter's maxStorageBufferBindingSize (${maxBinding} bytes)`);
    }
    return { offset, size, first: (start - offset) / 4 };
  }

  function submit(): void {
    endPass();
    if (!encoder) return;
    device.queue.submit([encoder.finish()]);
    encoder = null;
    const done = pendingUniforms;
    pendingUniforms = [];
    if (done.length) void device.queue.onSubmittedWorkDone().then(() => done.forEach((u) => u.destroy()));
  }

  return {
    device,
    buffer(elements) {
      if (!(Number.isSafeInteger(elements) && elements >= 0)) throw new RangeError(`webgpu: buffer of ${elements} elements`);
      // Buffers start zeroed (WebGPU guarantees it).
      return device.createBuffer({ size: Math.max(4, elements * 4), usage: STORAGE | COPY_SRC | COPY_DST });
    },
    dispatch(d) {
      const windows = d.bindings.map(windowOf);
      for (let i = 0; i < windows.length; i++) {
        for (let j = 0; j < i; j++) {
          if (d.bindings[i].buffer !== d.bindings[j].buffer) continue;
          const [a, b] = [windows[i], windows[j]];
          if (a.offset < b.offset + b.size && b.offset < a.offset + a.size) {
            throw new RangeError(`webgpu: kernel ${d.key}: bindings ${j + 1} and ${i + 1} overlap in one buffer (bind such tensors once)`);
          }
        }
      }
      const words: UniformWord[] = [...windows.map((w) => w.first), ...(d.uniforms ?? [])];
      const data = new ArrayBuffer(Math.max(16, Math.ceil((words.length * 4) / 16) * 16));
      const u32 = new Uint32Array(data);
      const f32 = new Float32Array(data);
      const i32 = new Int32Array(data);
      words.forEach((w, i) => {
        if (typeof w === 'number') u32[i] = w;
        else if ('f32' in w) f32[i] = w.f32;
        else i32[i] = w.i32;
      });
      const uniform = device.createBuffer({ size: data.byteLength, usage: UNIFORM | COPY_DST, mappedAtCreation: true });
      new Uint8Array(uniform.getMappedRange()).set(new Uint8Array(data));
      uniform.unmap();
      pendingUniforms.push(uniform);
      const p = pipeline(d.key, d.wgsl);
      const entries: GPUBindGroupEntry[] = [{ binding: 0, resource: { buffer: uniform } }];
      windows.forEach((w, i) => entries.push({ binding: i + 1, resource: { buffer: d.bindings[i].buffer, offset: w.offset, size: w.size } }));
      const group = device.createBindGroup({ layout: p.getBindGroupLayout(0), entries });
      pass ??= enc().beginComputePass();
      pass.setPipeline(p);
      pass.setBindGroup(0, group);
      const [x, y = 1, z = 1] = d.workgroups;
      pass.dispatchWorkgroups(x, y, z);
    },
    write(dst, src) {
      if (src.length > dst.length) throw new RangeError(`webgpu: write of ${src.length} elements into a tensor of ${dst.length}`);
      if (src.length === 0) return;
      // queue.writeBuffer runs before any later submit but after earlier ones: submit what is recorded first.
      submit();
      device.queue.writeBuffer(dst.buffer, dst.offset * 4, src.buffer, src.byteOffset, src.length * 4);
    },
    copy(src, dst, length) {
      if (length === 0) return;
      endPass();
      enc().copyBufferToBuffer(src.buffer, src.offset * 4, dst.buffer, dst.offset * 4, length * 4);
    },
    async read(src) {
      const bytes = src.length * 4;
      if (bytes === 0) return new ArrayBuffer(0);
      const staging = device.createBuffer({ size: Math.ceil(bytes / 4) * 4, usage: MAP_READ | COPY_DST });
      endPass();
      enc().copyBufferToBuffer(src.buffer, src.offset * 4, staging, 0, bytes);
      submit();
      try {
        await staging.mapAsync(1 /* GPUMapMode.READ */);
        return staging.getMappedRange().slice(0);
      } finally {
        staging.destroy();
      }
    },
    submit,
    async flush() {
      submit();
      await device.queue.onSubmittedWorkDone();
    },
    takeErrors() {
      return errors.splice(0);
    },
    destroy() {
      submit();
      device.destroy();
    },
  };
}
