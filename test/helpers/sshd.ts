import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePortRange } from './ports.js';

/**
 * A throwaway sshd on a loopback port, run as root from its own config, host key
 * and authorized_keys in a temp dir: a real target for the launcher's ssh path.
 * The system's sshd (if any) and ~/.ssh are never touched.
 */

const SSHD = '/usr/sbin/sshd';

export interface Sshd {
  port: number;
  pid: number;
  /** The client key that authorized_keys accepts. */
  identityFile: string;
  /** A second key that is not authorized. */
  strangerIdentityFile: string;
  dir: string;
  /** sshd's own log (it runs with -e). */
  log(): string;
  stop(): Promise<void>;
}

/** Why a throwaway sshd cannot run here, or null when it can. */
export function sshdUnavailable(): string | null {
  if (process.platform !== 'linux') return `the sshd test needs Linux (this is ${process.platform})`;
  if (process.getuid?.() !== 0) return 'the sshd test starts sshd as root and logs in as root; run the tests as root, as CI does';
  if (!existsSync(SSHD)) return `${SSHD} is missing (Debian package openssh-server; .ci/setup-system.sh installs it)`;
  return sshClientUnavailable() ?? (existsSync('/run/sshd') ? null : 'sshd needs its privilege separation directory /run/sshd; .ci/setup-system.sh creates it');
}

/** Why the ssh client cannot run here, or null when it can. */
export function sshClientUnavailable(): string | null {
  for (const tool of ['ssh', 'ssh-keygen']) {
    const r = spawnSync(tool, ['-V'], { encoding: 'utf8' });
    // ssh-keygen has no -V and says so with exit 1: it still runs.
    if (r.error) return `\`${tool}\` is not installed (Debian package openssh-client)`;
  }
  return null;
}

function keygen(file: string): void {
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'ringattn-test', '-f', file], { stdio: 'ignore' });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export async function startSshd(): Promise<Sshd> {
  const dir = mkdtempSync(join(tmpdir(), 'ringattn-sshd-'));
  let child: ChildProcess | null = null;
  try {
    keygen(join(dir, 'host_key'));
    keygen(join(dir, 'client_key'));
    keygen(join(dir, 'stranger_key'));
    writeFileSync(join(dir, 'authorized_keys'), readFileSync(join(dir, 'client_key.pub')), { mode: 0o600 });
    let lastLog = '';
    for (let attempt = 0; attempt < 5; attempt++) {
      const port = await freePortRange(1);
      const config = join(dir, 'sshd_config');
      writeFileSync(
        config,
        [
          `Port ${port}`,
          'ListenAddress 127.0.0.1',
          `HostKey ${join(dir, 'host_key')}`,
          `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
          `PidFile ${join(dir, 'sshd.pid')}`,
          'PermitRootLogin prohibit-password',
          'PubkeyAuthentication yes',
          // Offered so that a client allowed to prompt would be asked for a password: BatchMode must keep it from asking.
          'PasswordAuthentication yes',
          'KbdInteractiveAuthentication no',
          'UsePAM no',
          'StrictModes no',
          'UseDNS no',
          'PrintMotd no',
          // Every rank is a connection, and the launcher opens more to stop remote workers.
          'MaxStartups 100',
          'MaxSessions 100',
          'LogLevel VERBOSE',
          '',
        ].join('\n'),
      );
      const check = spawnSync(SSHD, ['-t', '-f', config], { encoding: 'utf8' });
      if (check.status !== 0) throw new Error(`sshd rejects the test config: ${check.stderr.trim()}`);
      let log = '';
      child = spawn(SSHD, ['-D', '-e', '-f', config], { stdio: ['ignore', 'ignore', 'pipe'] });
      child.stderr!.on('data', (d: Buffer) => (log += d.toString()));
      let exited = false;
      child.once('exit', () => (exited = true));
      const deadline = Date.now() + 10000;
      while (!exited && Date.now() < deadline && !(await canConnect(port))) await new Promise((r) => setTimeout(r, 50));
      if (!exited && (await canConnect(port))) {
        const proc = child;
        const stop = async () => {
          // Sessions outlive a stopped listener: end any a failed test left open first.
          for (const pid of descendants(proc.pid!)) {
            try {
              process.kill(pid, 'SIGKILL');
            } catch {
              // already gone
            }
          }
          if (proc.exitCode === null && proc.signalCode === null) {
            const gone = new Promise((r) => proc.once('exit', r));
            proc.kill('SIGTERM');
            await Promise.race([gone, new Promise((r) => setTimeout(r, 3000))]);
            if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
          }
          rmSync(dir, { recursive: true, force: true });
        };
        return {
          port,
          pid: proc.pid!,
          identityFile: join(dir, 'client_key'),
          strangerIdentityFile: join(dir, 'stranger_key'),
          dir,
          log: () => log,
          stop,
        };
      }
      lastLog = log;
      child.kill('SIGKILL');
      child = null;
    }
    throw new Error(`sshd did not come up: ${lastLog.trim().split('\n').slice(-3).join(' | ')}`);
  } catch (err) {
    child?.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

/** Parent pid of a process, or null when it is gone. */
export function parentOf(pid: number): number | null {
  try {
    // The command name in field 2 may contain spaces and parentheses: the ppid follows the last ')'.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return null;
  }
}

/** The pids from a process up to init. */
export function ancestors(pid: number): number[] {
  const out: number[] = [];
  for (let p = parentOf(pid); p !== null && p > 1 && out.length < 64; p = parentOf(p)) out.push(p);
  return out;
}

/** Every live process below `pid` (its children, their children, ...). */
export function descendants(pid: number): number[] {
  const parent = new Map<number, number>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const pp = parentOf(Number(d));
    if (pp !== null) parent.set(Number(d), pp);
  }
  const out: number[] = [];
  for (const [p] of parent) {
    for (let a = parent.get(p); a !== undefined && a > 1; a = parent.get(a)) {
      if (a === pid) {
        out.push(p);
        break;
      }
    }
  }
  return out;
}
