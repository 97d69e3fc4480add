/** Shared by the bench tests: the bundled model's weight bytes, and running the compiled CLI. */
import { execFile } from 'node:child_process';
import { CLI, MODEL_DIR, ROOT } from './helpers.js';

export const MODEL = MODEL_DIR;

/**
 * Bytes of the bundled model's weights as loaded, from its shapes (tied embedding counted once): its bf16
 * matrices in 2 bytes (native) or 4 (f32), norm weights in float32 either way.
 */
export function bundledWeightsBytes(weights: 'native' | 'f32' = 'native'): number {
  const [V, D, L, H, KV, d, I] = [8192, 512, 8, 4, 2, 128, 1408];
  const matrices = V * D + L * ((H + 2 * KV) * d * D + D * H * d + 2 * I * D + D * I);
  const norms = L * 2 * D + D;
  return (weights === 'native' ? 2 : 4) * matrices + 4 * norms;
}

export function runCli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { cwd: ROOT, maxBuffer: 1 << 24 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}
