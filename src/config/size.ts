import * as z from 'zod';
import { UserError } from '../errors.js';

/**
 * Sizes (sequence lengths, chunk sizes, byte limits) are written either as plain
 * integers or with a K/M/G suffix meaning a power of two: "64K" = 65536, "8M" = 8388608.
 * A fraction is allowed only when the result is whole ("1.5K" = 1536).
 */
export const SIZE_PATTERN = '^[0-9]+(\\.[0-9]+)?[KMGkmg]?$';
const SIZE_RE = new RegExp(SIZE_PATTERN);
const MULTIPLIER: Record<string, number> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30 };

const EXPECTED = 'expected a positive integer or a size like "64K", "8M", "1G" (powers of two)';

/** Returns the size or, when the value is not one, why (without naming the field). */
function trySize(x: unknown): { ok: true; value: number } | { ok: false; message: string } {
  if (typeof x === 'number') {
    if (Number.isSafeInteger(x) && x > 0) return { ok: true, value: x };
    return { ok: false, message: `${EXPECTED}, got ${x}` };
  }
  if (typeof x !== 'string') return { ok: false, message: `${EXPECTED}, got ${x === null ? 'null' : typeof x}` };
  const s = x.trim();
  if (!SIZE_RE.test(s)) return { ok: false, message: `${EXPECTED}, got ${JSON.stringify(x)}` };
  const last = s[s.length - 1].toLowerCase();
  const suffix = last in MULTIPLIER ? last : '';
  const digits = suffix ? s.slice(0, -1) : s;
  const value = Number(digits) * MULTIPLIER[suffix];
  if (!Number.isInteger(value)) {
    return { ok: false, message: `${JSON.stringify(x)} is not a whole number (${value}); write an integer or a size whose value is whole` };
  }
  if (!Number.isSafeInteger(value) || value <= 0) {
    return { ok: false, message: `${JSON.stringify(x)} must be a positive integer no larger than 2^53-1` };
  }
  return { ok: true, value };
}

/** Parses a size; `what` names the value in the error ("--seq-len", "train.seqLen"). */
export function parseSize(x: string | number, what: string): number {
  const r = trySize(x);
  if (!r.ok) throw new UserError(`${what}: ${r.message}`);
  return r.value;
}

/** Formats a size the way a user would write it, using the largest exact suffix. */
export function formatSize(n: number): string {
  for (const [suffix, mult] of [['G', 2 ** 30], ['M', 2 ** 20], ['K', 2 ** 10]] as const) {
    if (n >= mult && n % mult === 0) return `${n / mult}${suffix}`;
  }
  return String(n);
}

/**
 * A size field of the spec: accepts a positive integer or a size string, and yields the number.
 * The input side (what the JSON Schema describes) keeps both forms.
 */
const sizeError = (iss: { input?: unknown }) =>
  `${EXPECTED}, got ${iss.input === undefined ? 'nothing' : JSON.stringify(iss.input)}`;

export const sizeSchema = z
  .union([z.int({ error: sizeError }).positive({ error: sizeError }), z.string().regex(SIZE_RE, { error: sizeError })], {
    error: sizeError,
  })
  .transform((v, ctx) => {
    const r = trySize(v);
    if (r.ok) return r.value;
    ctx.issues.push({ code: 'custom', message: r.message, input: v });
    return z.NEVER;
  });
