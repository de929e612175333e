/** a mod n in 0..n-1, for negative a too: the ring position `a` steps from rank 0 (a rank's predecessor is mod(rank - 1, n)). */
export const mod = (a: number, n: number): number => ((a % n) + n) % n;
