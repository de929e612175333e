import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';

/**
 * Distinct IP addresses on one machine: Linux network namespaces, each joined
 * to a bridge in the root namespace by a veth pair. The bridge holds the
 * root-side address (where the coordinator binds); namespace i holds
 * `<subnet>.<10+i>`. Every address is in a 10.231.X.0/24 subnet that no
 * interface of this machine uses yet, so nothing outside the namespaces the
 * test creates is ever a target.
 */

export interface NetnsLab {
  /** Namespace names, `ra-ns-<pid>-<i>`. */
  names: string[];
  /** Address of namespace i (on its `eth0`). */
  addresses: string[];
  /** The root namespace's address on the bridge. */
  rootAddress: string;
  bridge: string;
  /** Root-side veth of namespace i (its link to the bridge). */
  rootVeths: string[];
  /** Cuts namespace i off: its veth goes down on both ends. */
  linkDown(i: number): void;
  /** Bytes received and sent by namespace i's eth0. */
  counters(i: number): { rx: number; tx: number };
  /** `ss -tn` inside namespace i: established TCP connections as "local peer" pairs. */
  connections(i: number): Array<{ local: string; peer: string }>;
  /** Removes every namespace, veth and the bridge; safe to call twice. */
  destroy(): void;
}

/** Why namespaces cannot be made here, or null when they can. */
export function netnsUnavailable(): string | null {
  if (process.platform !== 'linux') return `network namespaces need Linux (this is ${process.platform})`;
  if (process.getuid?.() !== 0) return 'network namespaces need root (run the tests as root, as CI does)';
  const ip = spawnSync('ip', ['-V'], { encoding: 'utf8' });
  if (ip.error || ip.status !== 0) return '`ip` (iproute2) is not installed; .ci/setup-system.sh installs it';
  const probe = `ra-probe-${process.pid}`;
  const add = spawnSync('ip', ['netns', 'add', probe], { encoding: 'utf8' });
  spawnSync('ip', ['netns', 'del', probe]);
  if (add.status !== 0) return `\`ip netns add\` fails here: ${add.stderr.trim() || `exit ${add.status}`}`;
  return null;
}

function ip(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function quiet(...args: string[]): void {
  spawnSync('ip', args, { stdio: 'ignore' });
}

/** A /24 in 10.231.0.0/16 with no address of this machine in it. */
function freeSubnet(): string {
  const used = ip('-4', '-o', 'addr', 'show');
  const routes = ip('-4', 'route', 'show', 'table', 'all');
  for (let k = 0; k < 256; k++) {
    const x = (process.pid + k) % 250;
    const prefix = `10.231.${x}.`;
    if (!used.includes(prefix) && !routes.includes(prefix) && !routes.includes(`10.231.${x}.0/`)) return `10.231.${x}`;
  }
  throw new Error('no free 10.231.X.0/24 subnet for the test namespaces');
}

export function createNetnsLab(count: number): NetnsLab {
  const tag = `${process.pid}`;
  const names = Array.from({ length: count }, (_, i) => `ra-ns-${tag}-${i}`);
  // Interface names are at most 15 characters.
  const bridge = `rabr${tag}`.slice(0, 15);
  const rootVeths = names.map((_, i) => `rav${tag}-${i}`.slice(0, 15));
  const subnet = freeSubnet();
  const rootAddress = `${subnet}.1`;
  const addresses = names.map((_, i) => `${subnet}.${10 + i}`);
  let destroyed = false;

  const destroy = () => {
    if (destroyed) return;
    destroyed = true;
    // Deleting a namespace deletes its end of the veth, which takes the root end along.
    for (const n of names) quiet('netns', 'del', n);
    for (const v of rootVeths) quiet('link', 'del', v);
    quiet('link', 'del', bridge);
  };

  try {
    ip('link', 'add', bridge, 'type', 'bridge');
    ip('addr', 'add', `${rootAddress}/24`, 'dev', bridge);
    ip('link', 'set', bridge, 'up');
    names.forEach((n, i) => {
      ip('netns', 'add', n);
      ip('-n', n, 'link', 'set', 'lo', 'up');
      ip('link', 'add', rootVeths[i], 'type', 'veth', 'peer', 'name', 'eth0', 'netns', n);
      ip('link', 'set', rootVeths[i], 'master', bridge);
      ip('link', 'set', rootVeths[i], 'up');
      ip('-n', n, 'addr', 'add', `${addresses[i]}/24`, 'dev', 'eth0');
      ip('-n', n, 'link', 'set', 'eth0', 'up');
    });
  } catch (err) {
    destroy();
    throw err;
  }

  return {
    names,
    addresses,
    rootAddress,
    bridge,
    rootVeths,
    linkDown(i) {
      ip('-n', names[i], 'link', 'set', 'eth0', 'down');
      ip('link', 'set', rootVeths[i], 'down');
    },
    counters(i) {
      const stats = JSON.parse(ip('-n', names[i], '-j', '-s', 'link', 'show', 'eth0')) as Array<{ stats64: { rx: { bytes: number }; tx: { bytes: number } } }>;
      return { rx: stats[0].stats64.rx.bytes, tx: stats[0].stats64.tx.bytes };
    },
    connections(i) {
      const out = execFileSync('ip', ['netns', 'exec', names[i], 'ss', '-Htn', 'state', 'established'], { encoding: 'utf8' });
      return out
        .split('\n')
        .map((l) => l.trim().split(/\s+/))
        .filter((f) => f.length >= 4)
        .map((f) => ({ local: f[f.length - 2], peer: f[f.length - 1] }));
    },
    destroy,
  };
}

/** Namespaces and interfaces of this process's labs still present (a leak check). */
export function leftovers(): string[] {
  const tag = `${process.pid}`;
  const ns = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout ?? '';
  const links = spawnSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' }).stdout ?? '';
  return [
    ...ns.split('\n').map((l) => l.split(' ')[0]).filter((n) => n.startsWith(`ra-ns-${tag}-`)),
    ...links.split('\n').map((l) => l.split(':')[1]?.trim().split('@')[0] ?? '').filter((n) => n === `rabr${tag}`.slice(0, 15) || n.startsWith(`rav${tag}-`)),
  ];
}

/** Inode of a process's network namespace (`net:[N]`), or null when it is gone. */
export function netnsOf(pid: number | 'self'): string | null {
  try {
    return readlinkSync(`/proc/${pid}/ns/net`);
  } catch {
    return null;
  }
}

/** Inode of a named namespace, read from the file `ip netns add` bind-mounts. */
export function namedNetnsInode(name: string): string {
  const out = execFileSync('ip', ['netns', 'exec', name, 'readlink', '/proc/self/ns/net'], { encoding: 'utf8' });
  return out.trim();
}

/** Worker processes (`bin/ringattn.js worker`) whose environment names this coordinator, with their rank. */
export function workersOf(coordinator: string): Array<{ pid: number; rank: number; env: Map<string, string> }> {
  const out: Array<{ pid: number; rank: number; env: Map<string, string> }> = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const cmd = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      if (!cmd.some((a) => a.endsWith('bin/ringattn.js')) || !cmd.includes('worker')) continue;
      const env = new Map(
        readFileSync(`/proc/${d}/environ`, 'utf8')
          .split('\0')
          .filter(Boolean)
          .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)] as [string, string]),
      );
      if (env.get('RINGATTN_COORDINATOR') !== coordinator) continue;
      out.push({ pid: Number(d), rank: Number(env.get('RINGATTN_RANK')), env });
    } catch {
      // exited while we looked
    }
  }
  return out;
}
