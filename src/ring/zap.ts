import { randomBytes } from 'node:crypto';
import * as zmq from 'zeromq';

/** One key pair per job: every member of a job holds the same one. */
export interface CurveKeys {
  publicKey: string;
  secretKey: string;
}

/**
 * A ZAP (ZeroMQ RFC 27) handler for the sockets that accept connections (the
 * coordinator's ROUTER, each rank's PULL):
 * - with CURVE, a client must prove it holds the job's own key pair (every
 *   member of a job uses the same one); CURVE alone would let in any client
 *   that knows the server's public key;
 * - without, it still matters that ZAP is on: libzmq then refuses peers that
 *   speak the unversioned ZMTP 1.0 or 2.0, as which it would otherwise read any
 *   raw TCP stream (an HTTP request, random bytes) as messages.
 * One handler serves every such socket of the process, told apart by a ZAP
 * domain; it lives while at least one guarded socket does. A socket whose one
 * expected peer has connected can be locked: from then on nobody else gets a
 * connection, so nobody else gets a receive queue in this process either.
 */
const ZAP_ENDPOINT = 'inproc://zeromq.zap.01';
/** Domain -> the client key CURVE peers must present, null for NULL security, false once locked. */
const zapDomains = new Map<string, Buffer | null | false>();
let zapHandler: Promise<zmq.Router> | null = null;

async function startZapHandler(): Promise<zmq.Router> {
  const router = new zmq.Router({ linger: 0 });
  // A handler just released may still hold the endpoint while its close completes.
  for (let attempt = 0; ; attempt++) {
    try {
      await router.bind(ZAP_ENDPOINT);
      break;
    } catch (err) {
      if ((err as { code?: string }).code !== 'EADDRINUSE' || attempt >= 200) throw err;
      await new Promise((r) => setTimeout(r, 10));
    }
  }
  void (async () => {
    try {
      for await (const frames of router) {
        // [peer id, empty, version, request id, domain, address, identity, mechanism, credentials...]
        const [id, empty, version, requestId, domain, , , mechanism, key] = frames;
        const allowed = zapDomains.get(domain?.toString() ?? '');
        const mech = mechanism?.toString();
        const ok =
          version?.toString() === '1.0' &&
          allowed !== undefined &&
          allowed !== false &&
          (allowed === null ? mech === 'NULL' : mech === 'CURVE' && key !== undefined && allowed.equals(key));
        await router.send([id, empty ?? Buffer.alloc(0), '1.0', requestId ?? Buffer.alloc(0), ok ? '200' : '400', ok ? 'OK' : 'not a member of this job', '', '']);
      }
    } catch {
      // closed
    }
  })();
  return router;
}

/**
 * Puts `socket` (not yet bound) under the ZAP handler: with `keys` (a CURVE
 * server) it accepts only clients holding them; without, only ZMTP 3 peers.
 * `release` is called when the socket closes; `lock` refuses every later connection.
 */
export interface ServerGuard {
  release: () => void;
  lock: () => void;
}

export async function guardServer(socket: zmq.Socket, keys?: CurveKeys): Promise<ServerGuard> {
  const domain = `ringattn-${randomBytes(8).toString('hex')}`;
  socket.zapDomain = domain;
  zapDomains.set(domain, keys ? z85Decode(keys.publicKey) : null);
  zapHandler ??= startZapHandler();
  try {
    await zapHandler;
  } catch (err) {
    zapDomains.delete(domain);
    zapHandler = null;
    throw err;
  }
  let released = false;
  return {
    release: () => {
      if (released) return;
      released = true;
      zapDomains.delete(domain);
      if (zapDomains.size === 0 && zapHandler) {
        const h = zapHandler;
        zapHandler = null;
        void h.then((r) => r.close()).catch(() => undefined);
      }
    },
    lock: () => {
      if (!released) zapDomains.set(domain, false);
    },
  };
}

const Z85 = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#';

/** Z85 (ZeroMQ RFC 32) text to bytes: each 5 characters are a big-endian base-85 number of 4 bytes. */
export function z85Decode(text: string): Buffer {
  if (text.length % 5 !== 0) throw new Error('a Z85 string has a multiple of 5 characters');
  const out = Buffer.alloc((text.length / 5) * 4);
  for (let i = 0; i < text.length; i += 5) {
    let v = 0;
    for (let j = 0; j < 5; j++) {
      const d = Z85.indexOf(text[i + j]);
      if (d < 0) throw new Error(`not a Z85 character: ${JSON.stringify(text[i + j])}`);
      v = v * 85 + d;
    }
    if (v > 0xffffffff) throw new Error('Z85 group out of range');
    out.writeUInt32BE(v, (i / 5) * 4);
  }
  return out;
}

/** A well-formed key pair: two 40-character Z85 strings (32 bytes each). */
export function isCurveKeys(x: unknown): x is CurveKeys {
  const k = x as Partial<CurveKeys> | null;
  const ok = (s: unknown) => typeof s === 'string' && s.length === 40 && [...s].every((c) => Z85.includes(c));
  return typeof k === 'object' && k !== null && ok(k.publicKey) && ok(k.secretKey);
}
