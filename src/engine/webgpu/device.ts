import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { UserError } from '../../errors.js';

/**
 * WebGPU in Node through Dawn's bindings (the `webgpu` package, whose tarball
 * carries a prebuilt dawn.node). Dawn picks one adapter per instance; the list
 * of adapters comes from asking for one that cannot exist, whose error names
 * them all ("Available adapters: * backend: 'vulkan', name: '...'").
 */

export interface AdapterInfo {
  /** Position in Dawn's adapter list. */
  index: number;
  name: string;
  backend: string;
  vendor: string;
  architecture: string;
  description: string;
  /** A CPU implementation (lavapipe/llvmpipe, SwiftShader): right answers, no speed. */
  software: boolean;
}

export interface OpenedGpu {
  device: GPUDevice;
  adapter: AdapterInfo;
  limits: Record<string, number>;
  /** Dawn's instance (kept alive by this module: see `instances`). */
  readonly instance: GPU;
  /** Releases the device and Dawn's instance (Dawn's threads otherwise keep Node alive). */
  close(): void;
}

/** Which adapter: an index in Dawn's list or (part of) a name; absent = the slot's share of the hardware adapters. */
export type AdapterWant = number | string | undefined;

type Dawn = { create(options: string[]): GPU; globals: Record<string, unknown> };

const INSTALL_HINT =
  'install a Vulkan driver (NVIDIA: the proprietary driver with its Vulkan ICD; AMD/Intel: mesa-vulkan-drivers; ' +
  'a software GPU for tests: mesa-vulkan-drivers 25 from bookworm-backports, see docs/launch.md)';

/**
 * Every Dawn instance this process made, kept for its whole life. Dawn's async
 * runner goes on polling an instance for as long as it has work in flight
 * (a mapAsync, an onSubmittedWorkDone), and an instance the GC collected under
 * it aborts the process ("std::system_error: Invalid argument" from
 * InstanceBase::ProcessEvents, seen in a core dump), or hangs it. A handful of
 * instances per process cost nothing; an idle one does not keep Node alive.
 */
const instances: GPU[] = [];

function createInstance(d: Dawn, options: string[]): GPU {
  const gpu = d.create(options);
  instances.push(gpu);
  return gpu;
}

let dawn: Dawn | null | undefined;
let dawnMissing = '';

/** Dawn's bindings, or null (with `webgpuUnavailable()` saying why). */
function loadDawn(): Dawn | null {
  if (dawn !== undefined) return dawn;
  try {
    const require = createRequire(import.meta.url);
    // The package is ESM-only; its dawn.node is what we need, loaded the way its index.js does.
    const root = require.resolve('webgpu/package.json').replace(/package\.json$/, '');
    const arch = process.platform === 'darwin' ? 'universal' : process.arch;
    dawn = require(`${root}dist/${process.platform}-${arch}/dawn.node`) as Dawn;
    Object.assign(globalThis, dawn.globals);
  } catch (e) {
    dawnMissing = `Dawn's WebGPU bindings did not load (the webgpu package): ${(e as Error).message.split('\n')[0]}`;
    dawn = null;
  }
  return dawn;
}

/** Why WebGPU cannot run in this process at all, or null. */
export function webgpuUnavailable(): string | null {
  return loadDawn() ? null : dawnMissing;
}

function isSoftware(name: string, architecture: string, fallback: boolean): boolean {
  return fallback || architecture === 'software' || /llvmpipe|lavapipe|swiftshader|software/i.test(name);
}

/** Dawn's adapters, in its order; empty when there are none (no driver). */
export async function listAdapters(): Promise<AdapterInfo[]> {
  const d = loadDawn();
  if (!d) return [];
  let names: Array<{ backend: string; name: string }> = [];
  try {
    await createInstance(d, ['adapter=\u0001no-such-adapter\u0001']).requestAdapter();
  } catch (e) {
    names = [...(e as Error).message.matchAll(/backend: '([^']*)', name: '([^']*)'/g)].map((m) => ({ backend: m[1], name: m[2] }));
  }
  const out: AdapterInfo[] = [];
  for (const [index, n] of names.entries()) {
    const gpu = createInstance(d, [`adapter=${n.name}`]);
    const a = await gpu.requestAdapter();
    const info = a?.info;
    out.push({
      index,
      name: n.name,
      backend: n.backend,
      vendor: info?.vendor ?? '',
      architecture: info?.architecture ?? '',
      description: info?.description ?? '',
      software: isSoftware(n.name, info?.architecture ?? '', Boolean((a as unknown as { isFallbackAdapter?: boolean })?.isFallbackAdapter)),
    });
  }
  return out;
}

/**
 * listAdapters in a child process: Dawn and the Vulkan loader print their
 * notices (no driver found, lowered limits) straight to the process's own
 * output, which a launcher's console should not carry. null when the probe
 * itself could not run.
 */
export function listAdaptersQuietly(timeoutMs = 20000): Promise<AdapterInfo[] | null> {
  const self = new URL(import.meta.url).href;
  const code = `import(${JSON.stringify(self)}).then((m) => m.listAdapters()).then((a) => { process.stdout.write('\\nADAPTERS ' + JSON.stringify(a) + '\\n'); process.exit(0); })`;
  return new Promise((resolve) => {
    // Under tsx (the tests) this module is TypeScript, which the child reads through tsx too.
    const loader = self.endsWith('.ts') ? ['--import', 'tsx'] : [];
    execFile(process.execPath, [...loader, '--input-type=module', '-e', code], { timeout: timeoutMs, maxBuffer: 1 << 20 }, (err, stdout) => {
      const line = stdout.split('\n').find((l) => l.startsWith('ADAPTERS '));
      resolve(line && !err ? (JSON.parse(line.slice('ADAPTERS '.length)) as AdapterInfo[]) : null);
    });
  });
}

/** The launcher's adapter list for workers on its own machine (JSON of AdapterInfo[]): one probe per job, not one per worker. */
export const ADAPTERS_ENV = 'RINGATTN_WEBGPU_ADAPTERS';

/**
 * This machine's adapters without loading Dawn into this process: the
 * launcher's list when it handed one down, else a child process's. Loading
 * Dawn and a Vulkan driver costs a worker about 70 MiB (measured with
 * lavapipe), so `backend: auto` looks first and loads it only for a hardware
 * adapter. null when no probe could run.
 */
export async function probeAdapters(env: NodeJS.ProcessEnv = process.env): Promise<AdapterInfo[] | null> {
  const handed = env[ADAPTERS_ENV];
  if (handed) {
    try {
      return JSON.parse(handed) as AdapterInfo[];
    } catch {
      // A damaged list: probe afresh.
    }
  }
  return listAdaptersQuietly();
}

/** The hardware adapter `backend: auto` would take for a slot (by the launcher's list or a child's probe), or why there is none. */
export async function autoAdapter(want: AdapterWant, slot: number): Promise<AdapterInfo | string> {
  const adapters = await probeAdapters();
  return adapters ? adapterFor(adapters, want, slot, false, false) : 'the adapter probe did not run';
}

/** Which of `adapters` a slot would open (the rule of openGpu), or why none; the same words as openGpu's errors. */
export function adapterFor(adapters: AdapterInfo[], want: AdapterWant, slot: number, allowSoftware: boolean, hint = true): AdapterInfo | string {
  // The install hint belongs to an explicit request for webgpu, not to a log line of auto's.
  const driver = hint ? `; ${INSTALL_HINT}` : '';
  const looked = want === undefined ? 'any WebGPU adapter' : typeof want === 'number' ? `WebGPU adapter ${want}` : `the WebGPU adapter named '${want}'`;
  if (adapters.length === 0) return `no WebGPU adapter found (looked for ${looked})${driver}`;
  const listed = adapters.map((a) => `${a.index}: ${a.name}`).join('; ');
  let pick: AdapterInfo | undefined;
  if (typeof want === 'number') pick = adapters[want];
  else if (typeof want === 'string') pick = adapters.find((a) => a.name === want) ?? adapters.find((a) => a.name.toLowerCase().includes(want.toLowerCase()));
  else {
    // One worker per GPU: slot i of a host takes the i-th hardware adapter (round robin when there are fewer).
    const hardware = adapters.filter((a) => !a.software);
    const pool = hardware.length > 0 ? hardware : adapters;
    pick = pool[slot % pool.length];
  }
  if (!pick) return `${looked} not found (adapters here: ${listed})`;
  if (pick.software && !allowSoftware) return `only a software adapter is here (${pick.name})${driver}`;
  return pick;
}

/** Limits worth raising to the adapter's own (the defaults are a phone's). */
const LIMITS = [
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxStorageBuffersPerShaderStage',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY',
  'maxComputeWorkgroupsPerDimension',
] as const;

/**
 * Opens a device on the adapter asked for. Throws a UserError naming what was
 * looked for and how to get a driver when there is none: asking for webgpu
 * never falls back to the CPU.
 */
export async function openGpu(want: AdapterWant, opts: { allowSoftware: boolean; what?: string; slot?: number; hint?: boolean }): Promise<OpenedGpu> {
  const d = loadDawn();
  const what = opts.what ?? 'backend webgpu';
  if (!d) throw new UserError(`${what}: ${dawnMissing}`);
  const hint = opts.hint ?? true;
  const pick = adapterFor(await listAdapters(), want, opts.slot ?? 0, opts.allowSoftware, hint);
  if (typeof pick === 'string') throw new UserError(`${what}: ${pick}`);
  const instance = createInstance(d, [`adapter=${pick.name}`]);
  const adapter = await instance.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) throw new UserError(`${what}: Dawn listed ${pick.name} but gave no adapter for it${hint ? `; ${INSTALL_HINT}` : ''}`);
  const requiredLimits: Record<string, number> = {};
  for (const k of LIMITS) requiredLimits[k] = adapter.limits[k];
  const device = await adapter.requestDevice({ requiredLimits });
  let closed = false;
  return {
    device,
    adapter: pick,
    limits: requiredLimits,
    instance,
    close() {
      if (closed) return;
      closed = true;
      device.destroy();
    },
  };
}
