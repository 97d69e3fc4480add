/** Human-readable numbers shared by the CLI, the server, the studies and the browser demo. */

/** 1536 → "1.50 KiB" (binary units); whole bytes below 1 KiB. Exact counts belong in JSON outputs. */
export function formatBytes(n: number, digits = 2): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let u = 0;
  let x = n;
  while (Math.abs(x) >= 1024 && u < units.length - 1) {
    x /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${x.toFixed(digits)} ${units[u]}`;
}
