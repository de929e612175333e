import type { Logger } from 'pino';
import type { ClusterSpec } from '../config/index.js';
import type { Payload } from '../ring/frame.js';
import type { Ring, RingPeer } from '../ring/transport.js';

/**
 * A job is what a ring of workers runs: train, bench, attn, doctor. Each has a
 * worker side (runs on every rank, SPMD, with the ring open) and optionally a
 * driver side (runs in the coordinator: sends inputs, gathers results).
 */

/** The phases at which RINGATTN_FAULT (src/launch/fault.ts) can strike a job. */
export const FAULT_PHASES = ['forward', 'backward', 'allreduce', 'checkpoint'] as const;
export type FaultPhase = (typeof FAULT_PHASES)[number];
/** The testing hook a job calls at its phases, with the 1-based update. */
export type FaultPoint = (phase: FaultPhase, step: number) => void;

/** What a worker sees while running a job. */
export interface WorkerContext {
  rank: number;
  worldSize: number;
  host: string;
  localRank: number;
  spec: ClusterSpec;
  ring: Ring;
  /** The same ranks linked the other way (each to its predecessor), opened when the spec has attention.window. */
  reverse: Ring | null;
  peers: RingPeer[];
  runDir: string;
  args: Record<string, unknown>;
  log: Logger;
  /** Next input the driver sent under `name` (with its binary blobs). */
  input(name: string): Promise<{ value: unknown; blobs: Payload[] }>;
  /** Sends a named result to the driver. */
  result(name: string, value: unknown, blobs?: Payload[]): Promise<void>;
  /** Tells the launcher what this rank runs on (merged into the run's ring.json, shown by `ringattn view`). */
  status(info: Record<string, unknown>): Promise<void>;
  /** The RINGATTN_FAULT testing hook when it names this rank (see fault.ts); jobs call it at their phases. */
  fault?: FaultPoint;
}

/** What a driver sees in the coordinator. */
export interface DriverContext {
  spec: ClusterSpec;
  worldSize: number;
  peers: RingPeer[];
  runDir: string;
  args: Record<string, unknown>;
  send(rank: number, name: string, value: unknown, blobs?: Payload[]): Promise<void>;
  /** The next result `name` from `rank`. */
  result(rank: number, name: string): Promise<{ value: unknown; blobs: Payload[] }>;
  /** Prints to the launcher's console (not a worker log). */
  print(line: string): void;
}

export interface JobDefinition {
  kind: string;
  worker(ctx: WorkerContext): Promise<void>;
  /** Runs in the coordinator alongside the workers; its return value is the job's outcome. */
  driver?(ctx: DriverContext): Promise<unknown>;
}
