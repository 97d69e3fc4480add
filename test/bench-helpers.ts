/** Shared by the bench tests: the bundled model's weight bytes, and running the compiled CLI. */
import { execFile } from 'node:child_process';
import { CLI, MODEL_DIR, ROOT } from './helpers.js';

export const MODEL = MODEL_DIR;

/** Float32 bytes of the bundled model's weights, from its shapes (tied embedding counted once). */
export function bundledWeightsBytes(): number {
  const [V, D, L, H, KV, d, I] = [8192, 512, 8, 4, 2, 128, 1408];
  const perLayer = 2 * D + (H + 2 * KV) * d * D + D * H * d + 2 * I * D + D * I;
  return 4 * (V * D + L * perLayer + D);
}

export function runCli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { cwd: ROOT, maxBuffer: 1 << 24 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}
