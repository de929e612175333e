/**
 * Per-rank timeline of ring steps in Chrome trace / Perfetto "complete event"
 * form: one process per rank, one track for compute and one for transfers, so
 * a user can see each KV transfer running underneath the compute of the block
 * before it. Timestamps are microseconds on the host's wall clock, so ranks on
 * one host line up exactly.
 */
export interface TraceEvent {
  name: string;
  cat: string;
  ph: 'X';
  ts: number;
  dur: number;
  pid: number;
  tid: number;
  args?: Record<string, number | string>;
}

export const TRACK_COMPUTE = 1;
export const TRACK_TRANSFER = 2;
export const TRACK_WAIT = 3;

export class Trace {
  readonly events: TraceEvent[] = [];
  constructor(readonly rank: number) {}

  /** Records a span between two performance.now() readings. */
  span(name: string, tid: number, start: number, end: number, args?: TraceEvent['args']): void {
    const ts = (performance.timeOrigin + start) * 1000;
    this.events.push({ name, cat: tid === TRACK_COMPUTE ? 'compute' : tid === TRACK_TRANSFER ? 'transfer' : 'wait', ph: 'X', ts, dur: Math.max(0, (end - start) * 1000), pid: this.rank, tid, args });
  }
}

/** The JSON document Perfetto and chrome://tracing open: all ranks' events plus track names. */
export function traceDocument(events: TraceEvent[], ranks: Array<{ rank: number; host: string }>): object {
  const meta = ranks.flatMap(({ rank, host }) => [
    { name: 'process_name', ph: 'M', pid: rank, tid: 0, args: { name: `rank ${rank} (${host})` } },
    { name: 'thread_name', ph: 'M', pid: rank, tid: TRACK_COMPUTE, args: { name: 'compute' } },
    { name: 'thread_name', ph: 'M', pid: rank, tid: TRACK_TRANSFER, args: { name: 'incoming transfer' } },
    { name: 'thread_name', ph: 'M', pid: rank, tid: TRACK_WAIT, args: { name: 'waiting' } },
  ]);
  return { traceEvents: [...meta, ...events], displayTimeUnit: 'ms' };
}
