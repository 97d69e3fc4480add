/**
 * Bundle the browser face into dist/web with esbuild (part of `npm run build`):
 *   kivi.js         the library for pages (KiviModel from a URL, KiviWorker)
 *   kivi-worker.js  the generation worker (module worker)
 *   app.js, index.html, style.css   the demo page
 *   kernels.wasm, browser-helper.js the WebAssembly kernels and their helper-thread script
 * Any import of a Node built-in fails the build, so nothing Node-only can
 * reach a browser; Node-only modules that the library imports lazily (the filesystem byte source) are
 * replaced by a module that throws if a page ever imports it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

/** Modules only ever imported lazily, and only in Node. */
const NODE_ONLY = /[/](io[/]source-fs|model[/]host-node|kernels[/](wasm|webgpu)[/]node)\.js$/;

export const browserOnly: esbuild.Plugin = {
  name: 'browser-only',
  setup(build) {
    build.onResolve({ filter: /^node:|^(fs|path|os|worker_threads|child_process|url)$/ }, (a) => ({
      errors: [{ text: `${a.importer} imports the Node built-in "${a.path}": it cannot run in a browser` }],
    }));
    build.onResolve({ filter: /\.js$/ }, (a) => {
      const full = path.resolve(a.resolveDir, a.path);
      return NODE_ONLY.test(full) ? { path: full, namespace: 'node-only' } : undefined;
    });
    build.onLoad({ filter: /.*/, namespace: 'node-only' }, (a) => ({
      contents: `throw new Error(${JSON.stringify(`${path.basename(a.path)} needs Node.js`)});`,
      loader: 'js',
    }));
  },
};

export interface WebBuildOptions {
  /** Output folder (default dist/web). */
  outdir?: string;
  minify?: boolean;
}

export async function buildWeb(o: WebBuildOptions = {}): Promise<esbuild.Metafile> {
  const outdir = o.outdir ?? path.join(ROOT, 'dist/web');
  const src = path.join(ROOT, 'src/web');
  fs.rmSync(outdir, { recursive: true, force: true });
  const result = await esbuild.build({
    entryPoints: {
      kivi: path.join(src, 'lib.ts'),
      'kivi-worker': path.join(src, 'worker.ts'),
      app: path.join(src, 'page/app.ts'),
      // The wasm back end starts its helper threads from this file, beside the worker.
      'browser-helper': path.join(ROOT, 'src/kernels/wasm/browser-helper.ts'),
    },
    outdir,
    bundle: true,
    // No shared chunks: each file stands alone, and `new URL('./kivi-worker.js', import.meta.url)` in
    // the client resolves beside the bundle that holds it (kivi.js or app.js).
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    sourcemap: true,
    minify: o.minify ?? true,
    metafile: true,
    logLevel: 'silent',
    plugins: [browserOnly],
  });
  for (const f of ['index.html', 'style.css']) fs.copyFileSync(path.join(src, 'page', f), path.join(outdir, f));
  // The kernels, fetched from beside the bundle that runs them (asc builds them before this step).
  const wasm = path.join(ROOT, 'dist/src/kernels/wasm/kernels.wasm');
  if (!fs.existsSync(wasm)) throw new Error(`${wasm} is missing: build the WebAssembly kernels (asc) first`);
  fs.copyFileSync(wasm, path.join(outdir, 'kernels.wasm'));
  return result.metafile;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    await buildWeb();
  } catch (e) {
    // esbuild lists every error; print them one per line.
    const errors = (e as { errors?: esbuild.Message[] }).errors;
    if (errors?.length) for (const m of errors) process.stderr.write(`web build: ${m.location ? `${m.location.file}:${m.location.line}: ` : ''}${m.text}\n`);
    else process.stderr.write(`web build: ${(e as Error).message}\n`);
    process.exit(1);
  }
}
