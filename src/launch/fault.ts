import type { Logger } from 'pino';
import { UserError } from '../errors.js';
import { FAULT_PHASES, type FaultPhase, type FaultPoint } from '../jobs/types.js';

/**
 * A testing hook, and the only one: `RINGATTN_FAULT=rank:phase:step[:action[:attempt]]`
 * makes the worker of `rank` kill itself (`kill`, SIGKILL, the default) or freeze
 * (`stop`, SIGSTOP) when the training loop reaches `phase` of update `step`
 * (1-based). Phases: `forward` and `backward` (inside the first ring attention
 * call of the step, with the ring busy), `allreduce` (after this rank's first
 * all-reduce chunk is queued), `checkpoint` (rank 0, after the first file of the
 * checkpoint of that step is written and before it is published).
 * It fires only on launcher attempt `attempt` (default 0, `*` = every attempt;
 * the launcher exports RINGATTN_ATTEMPT, counting restarts), so a
 * `--max-restarts` run can be tested to recover, or to give up. The fault matrix in test/faults.test.ts is built on it.
 */


export interface FaultSpec {
  rank: number;
  phase: FaultPhase;
  step: number;
  action: 'kill' | 'stop';
  /** -1: every attempt. */
  attempt: number;
}

export function parseFault(text: string): FaultSpec {
  const [rank, phase, step, action = 'kill', attempt = '0', ...rest] = text.split(':');
  const int = (s: string | undefined) => (s !== undefined && /^\d+$/.test(s) ? Number(s) : NaN);
  const spec = { rank: int(rank), phase: phase as FaultPhase, step: int(step), action: action as FaultSpec['action'], attempt: attempt === '*' ? -1 : int(attempt) };
  if (rest.length > 0 || !Number.isInteger(spec.rank) || !Number.isInteger(spec.step) || !Number.isInteger(spec.attempt) || !FAULT_PHASES.includes(spec.phase) || !['kill', 'stop'].includes(spec.action)) {
    throw new UserError(`RINGATTN_FAULT=${text}: expected rank:phase:step[:kill|stop[:attempt|*]] with phase one of ${FAULT_PHASES.join(', ')}`);
  }
  return spec;
}

/** The hook for this rank, or undefined when RINGATTN_FAULT does not name this rank and attempt. */
export function faultPointFromEnv(rank: number, log: Logger, env: NodeJS.ProcessEnv = process.env): FaultPoint | undefined {
  const text = env.RINGATTN_FAULT;
  if (!text) return undefined;
  const f = parseFault(text);
  const attempt = Number(env.RINGATTN_ATTEMPT ?? 0);
  if (f.rank !== rank || (f.attempt !== -1 && f.attempt !== attempt)) return undefined;
  return (phase, step) => {
    if (phase !== f.phase || step !== f.step) return;
    const signal = f.action === 'kill' ? 'SIGKILL' : 'SIGSTOP';
    // Synchronous logger: the line is in the pipe before the signal lands.
    log.warn({ fault: text, phase, step, signal, faultAt: Date.now() }, `RINGATTN_FAULT: ${signal} to myself in ${phase} of step ${step}`);
    process.kill(process.pid, signal);
  };
}
