import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as zmq from 'zeromq';
import { parseSpec, specFromObject } from '../src/config/index.js';
import { UserError } from '../src/errors.js';
import { readKeyFile } from '../src/launch/external.js';
import { runJob } from '../src/launch/launcher.js';
import { Ring } from '../src/ring/transport.js';
import { isCurveKeys, z85Decode, type CurveKeys } from '../src/ring/zap.js';
import { workerPids } from './helpers/cli.js';
import { freePortRange } from './helpers/ports.js';

/*
 * `security: curve`: every socket of the job (coordinator and ring) encrypted
 * and authenticated with the job's CURVE key pair, which no command line, no
 * environment and no log holds. Processes without the keys (a plain socket, a
 * socket with other keys, one that knows only the public key) neither join,
 * read nor inject. Sockets bind to the configured address only. Run
 * directories, logs and key files are owner-only.
 */

const tmp = mkdtempSync(path.join(tmpdir(), 'ra-security-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const keyPair = () => zmq.curveKeyPair() as CurveKeys;

/** Local addresses of TCP sockets listening on `port` (IPv4 and IPv6), from /proc/net. */
function listeners(port: number): string[] {
  const out: string[] = [];
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 4 || f[3] !== '0A') continue; // LISTEN
      const [addr, p] = f[1].split(':');
      if (parseInt(p, 16) !== port) continue;
      out.push(addr.length === 8 ? addr.match(/../g)!.reverse().map((h) => parseInt(h, 16)).join('.') : addr);
    }
  }
  return out;
}

interface Intruder {
  what: string;
  socket: zmq.Dealer | zmq.Push;
  handshakes: number;
  received: number;
}

/** A socket that tries to reach `endpoint` as a stranger, and counts what it gets through. */
function intruder(what: string, kind: 'dealer' | 'push', endpoint: string, keys: { server?: string; own?: CurveKeys }): Intruder {
  const socket = kind === 'dealer' ? new zmq.Dealer({ linger: 0, sendTimeout: 200 }) : new zmq.Push({ linger: 0, sendTimeout: 200 });
  if (keys.server) {
    socket.curveServerKey = keys.server;
    socket.curvePublicKey = keys.own!.publicKey;
    socket.curveSecretKey = keys.own!.secretKey;
  }
  const me: Intruder = { what, socket, handshakes: 0, received: 0 };
  socket.events.on('handshake', () => me.handshakes++);
  socket.connect(endpoint);
  if (socket instanceof zmq.Dealer) {
    const d = socket;
    void (async () => {
      try {
        for await (const _ of d) me.received++;
      } catch {
        // closed
      }
    })();
  }
  return me;
}

describe('a curve job on a localhost ring', () => {
  it('is not joined, read or disturbed by processes without its keys; keys appear nowhere; binds only the configured address', async () => {
    const keys = keyPair();
    const world = 3;
    const basePort = await freePortRange(world + 1);
    const spec = specFromObject({
      security: 'curve',
      runDir: tmp,
      hosts: [{ name: 'local', address: '127.0.0.1', slots: world }],
      ring: { basePort, transport: 'tcp', heartbeatIntervalMs: 200, heartbeatTimeoutMs: 2000 },
    });
    const runDir = path.join(tmp, 'curve-job');
    const printed: string[] = [];
    const rounds = 40;
    const job = runJob(spec, { kind: 'ringcheck', args: { rounds, length: 2000, holdMs: 100 } }, { runDir, curve: keys, print: (l) => printed.push(l) });
    job.catch(() => undefined);
    const stranger = keyPair();
    const coordinator = `tcp://127.0.0.1:${basePort}`;
    const ringPort = `tcp://127.0.0.1:${basePort + 2}`;
    const intruders: Intruder[] = [];
    try {
      // Wait for the ring to be running.
      const end = Date.now() + 30000;
      while (!printed.some((l) => /ring check round passed/.test(l))) {
        assert.ok(Date.now() < end, 'the ring never started');
        await sleep(50);
      }
      const pids = workerPids(basePort);
      assert.equal(pids.length, world);

      // Keys are on no command line and in no environment.
      for (const pid of pids) {
        for (const f of ['cmdline', 'environ']) {
          const text = readFileSync(`/proc/${pid}/${f}`, 'latin1');
          assert.ok(!text.includes(keys.secretKey) && !text.includes(keys.publicKey), `a key is in /proc/${pid}/${f}`);
        }
      }
      // Coordinator and every ring port listen on 127.0.0.1 only.
      for (let p = basePort; p <= basePort + world; p++) assert.deepEqual(listeners(p), ['127.0.0.1'], `port ${p}`);

      intruders.push(
        intruder('plain socket at the coordinator', 'dealer', coordinator, {}),
        intruder('other keys at the coordinator', 'dealer', coordinator, { server: stranger.publicKey, own: stranger }),
        intruder('the public key and its own secret at the coordinator', 'dealer', coordinator, { server: keys.publicKey, own: stranger }),
        intruder('plain socket at a ring port', 'push', ringPort, {}),
        intruder('other keys at a ring port', 'push', ringPort, { server: stranger.publicKey, own: stranger }),
        intruder('the public key and its own secret at a ring port', 'push', ringPort, { server: keys.publicKey, own: stranger }),
      );
      // What a stranger would say: a hello taking over rank 0, a failure report, a ring message.
      const hello = JSON.stringify({ type: 'hello', rank: 0, host: 'evil', endpoint: 'tcp://127.0.0.1:1', protocol: 1, specHash: 'x', pid: 1, node: 'v0', blobKinds: [] });
      const failed = JSON.stringify({ type: 'failed', rank: 1, message: 'injected', blobKinds: [] });
      for (let i = 0; i < 10; i++) {
        for (const x of intruders) {
          const frames = x.socket instanceof zmq.Dealer ? [i % 2 ? hello : failed] : [Buffer.from('RING' + 'x'.repeat(60)), Buffer.alloc(16)];
          await x.socket.send(frames).catch(() => undefined);
        }
        await sleep(100);
      }

      const out = await job;
      const results = out.value as Array<{ rank: number; rounds: number }>;
      assert.deepEqual(results.map((r) => [r.rank, r.rounds]), [...Array(world).keys()].map((r) => [r, rounds]), 'the job ran undisturbed');
      for (const x of intruders) {
        assert.equal(x.handshakes, 0, `${x.what}: completed a handshake`);
        assert.equal(x.received, 0, `${x.what}: received something`);
      }
      assert.ok(!printed.some((l) => /injected|evil/.test(l)));
    } finally {
      for (const x of intruders) x.socket.close();
      await job.catch(() => undefined);
    }

    // Nothing the run wrote, and nothing it printed, holds a key.
    const files: string[] = [];
    const walk = (d: string) => {
      for (const e of readdirSync(d, { withFileTypes: true })) {
        if (e.isDirectory()) walk(path.join(d, e.name));
        else files.push(path.join(d, e.name));
      }
    };
    walk(runDir);
    assert.ok(files.length >= world, `run directory holds ${files.join(', ')}`);
    for (const f of [...files.map((p) => readFileSync(p, 'latin1')), printed.join('\n')]) {
      assert.ok(!f.includes(keys.secretKey) && !f.includes(keys.publicKey), 'a key was written to the run directory or the console');
    }
    // Owner-only run directory, logs folder and log files.
    assert.equal(statSync(runDir).mode & 0o077, 0);
    assert.equal(statSync(path.join(runDir, 'logs')).mode & 0o077, 0);
    for (const f of files) assert.equal(statSync(f).mode & 0o077, 0, `${f} is readable by others`);
    assert.deepEqual(workerPids(basePort), []);
  });

  it('encrypts ring traffic: a relay on the link sees the payload in clear without curve, never with it', async () => {
    const secret = Buffer.from('PAYLOAD-THAT-MUST-NOT-LEAK-'.repeat(40));
    for (const curve of [undefined, keyPair()]) {
      const [p0, p1, relayPort] = await Promise.all([freePortRange(1), freePortRange(1), freePortRange(1)]);
      const seen: Buffer[] = [];
      const relay = net.createServer((inbound) => {
        // Rank 1 may not have bound its port yet when rank 0 reaches the relay: retry until it has, holding what arrives.
        const pending: Buffer[] = [];
        let outbound: net.Socket | null = null;
        let tries = 0;
        const dial = () => {
          const o = net.connect(p1, '127.0.0.1');
          o.once('connect', () => {
            outbound = o;
            for (const d of pending.splice(0)) o.write(d);
            o.on('data', (d) => inbound.write(d));
            o.on('close', () => inbound.destroy());
          });
          o.once('error', () => {
            if (outbound === o || ++tries > 100) inbound.destroy();
            else setTimeout(dial, 20);
          });
        };
        dial();
        inbound.on('data', (d) => {
          seen.push(Buffer.from(d));
          if (outbound) outbound.write(d);
          else pending.push(Buffer.from(d));
        });
        inbound.on('error', () => outbound?.destroy());
        inbound.on('close', () => outbound?.destroy());
      });
      await new Promise<void>((r) => relay.listen(relayPort, '127.0.0.1', r));
      const common = { worldSize: 2, jobId: '0123456789abcdef', opTimeoutMs: 5000, connectTimeoutMs: 5000, heartbeatIntervalMs: 200, heartbeatTimeoutMs: 2000, maxMessageBytes: 1 << 20, curve };
      const ep = (p: number) => `tcp://127.0.0.1:${p}`;
      const [r0, r1] = await Promise.all([
        // Rank 0 reaches rank 1 through the relay.
        Ring.open({ ...common, rank: 0, bind: ep(p0), next: { rank: 1, host: 'b', endpoint: ep(relayPort) }, prev: { rank: 1, host: 'b', endpoint: ep(p1) } }),
        Ring.open({ ...common, rank: 1, bind: ep(p1), next: { rank: 0, host: 'a', endpoint: ep(p0) }, prev: { rank: 0, host: 'a', endpoint: ep(p0) } }),
      ]);
      const [o0, o1] = [r0.begin('data', ['data']), r1.begin('data', ['data'])];
      await o0.send('data', [new Uint8Array(secret)]);
      const [got] = await o1.recv('data');
      o0.end();
      o1.end();
      assert.ok(Buffer.from(got.data.buffer, got.data.byteOffset, got.data.byteLength).equals(secret));
      await Promise.all([r0.close(), r1.close()]);
      relay.close();
      const wire = Buffer.concat(seen);
      assert.ok(wire.length > secret.length, `the relay saw ${wire.length} bytes`);
      const leaked = wire.includes(Buffer.from('PAYLOAD-THAT-MUST-NOT-LEAK-'));
      assert.equal(leaked, !curve, curve ? 'curve traffic carried the payload in clear' : 'the control run should see the payload');
      assert.equal(wire.includes(Buffer.from('0123456789abcdef', 'hex')), !curve, 'the job id travels encrypted too');
    }
  });
});

describe('keys and paths', () => {
  it('a scheduler-mode key file is read only when owner-only and well-formed', () => {
    const file = path.join(tmp, 'keys.json');
    const keys = keyPair();
    writeFileSync(file, JSON.stringify(keys), { mode: 0o600 });
    assert.deepEqual(readKeyFile(file), keys);
    chmodSync(file, 0o644);
    assert.throws(() => readKeyFile(file), (e: unknown) => e instanceof UserError && /mode 644 lets other users read the job's keys; chmod 600 it/.test(e.message));
    chmodSync(file, 0o600);
    writeFileSync(file, '{"publicKey":"short","secretKey":"x"}');
    assert.throws(() => readKeyFile(file), (e: unknown) => e instanceof UserError && /expected JSON \{"publicKey","secretKey"\}/.test(e.message));
    assert.throws(() => readKeyFile(path.join(tmp, 'missing.json')), (e: unknown) => e instanceof UserError && /cannot read it \(ENOENT\)/.test(e.message));
    assert.ok(isCurveKeys(keys));
    assert.equal(z85Decode(keys.publicKey).length, 32);
    // The Z85 test vector of ZeroMQ RFC 32.
    assert.deepEqual([...z85Decode('HelloWorld')], [0x86, 0x4f, 0xd2, 0x6f, 0xb5, 0x59, 0xf7, 0x5b]);
  });

  it('names that could walk out of a directory are refused', () => {
    for (const bad of ['..', '.', '../x', 'a/b']) {
      assert.throws(() => parseSpec(`name: "${bad}"\nhosts: [{ name: h, address: 127.0.0.1 }]\n`, 's.yaml'), UserError, `name ${bad}`);
      assert.throws(() => parseSpec(`hosts: [{ name: "${bad}", address: 127.0.0.1 }]\n`, 's.yaml'), UserError, `host name ${bad}`);
    }
    assert.equal(parseSpec('name: a..b\nhosts: [{ name: h.1, address: 127.0.0.1 }]\n', 's.yaml').name, 'a..b');
  });
});
