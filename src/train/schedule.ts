/** The `train` fields the schedule reads. */
export interface ScheduleSpec {
  steps: number;
  lr: number;
  minLr: number;
  warmupSteps: number;
}

/**
 * Learning rate for update `step` (0-based: the first update is step 0).
 * Linear warm-up from lr/warmupSteps to lr over `warmupSteps` updates (the first
 * update already moves, so no step is wasted at lr = 0), then a half cosine from
 * lr down to minLr, reaching minLr at the last update (step = steps - 1).
 * Past `steps` it stays at minLr.
 */
export function learningRate(step: number, s: ScheduleSpec): number {
  const warm = Math.max(0, Math.floor(s.warmupSteps));
  if (step < warm) return (s.lr * (step + 1)) / warm;
  const span = s.steps - warm - 1;
  if (span <= 0) return step <= warm ? s.lr : s.minLr;
  const progress = Math.min(1, Math.max(0, (step - warm) / span));
  return s.minLr + 0.5 * (s.lr - s.minLr) * (1 + Math.cos(Math.PI * progress));
}
