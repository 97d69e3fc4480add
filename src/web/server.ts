/**
 * `kivi web`'s server: the demo page (dist/web) at /, the model's own files at /models/<name>/ with
 * Range requests (the browser loader reads safetensors in ranges), and /models.json naming it. Only the
 * files a model consists of are served (configs, tokenizer files, the weights the index names), never
 * anything else in its folder (.git/config, a link to /etc); those files may be symbolic links, as in a
 * Hugging Face cache, whose snapshot folders link into its blob store.
 * Responses are cross-origin isolated (COOP/COEP), so pages may use SharedArrayBuffer (threaded WASM).
 *
 *   const s = await WebServer.start({ modelDir: 'models/llama-28m-gqa', port: 0 });
 *   console.log(s.url);   // http://127.0.0.1:43121/
 *   await s.close();
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { readModelConfig } from '../model/load.js';
import { shardNames } from '../model/weights.js';
import { KiviError } from '../util/errors.js';

/** The files a model directory may contribute, besides the shards its index names. */
export const MODEL_FILES = [
  'config.json',
  'generation_config.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'chat_template.jinja',
  'model.safetensors',
  'model.safetensors.index.json',
];

/** The model's own files that exist in `dir` (links followed): what the server may send. */
export function servedModelFiles(dir: string): Set<string> {
  const names = [...MODEL_FILES];
  const indexFile = path.join(dir, 'model.safetensors.index.json');
  if (fs.existsSync(indexFile)) {
    let index: unknown;
    try {
      index = JSON.parse(fs.readFileSync(indexFile, 'utf8'));
    } catch {
      throw new KiviError(`${indexFile}: malformed JSON`);
    }
    names.push(...shardNames(index, indexFile));
  }
  return new Set(names.filter((n) => fs.statSync(path.join(dir, n), { throwIfNoEntry: false })?.isFile()));
}

/** dist/web, where `npm run build` puts the page (this file runs from dist/src/web). */
export const WEB_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../web');

export interface WebServerOptions {
  modelDir: string;
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  /** The built page (default dist/web). */
  webRoot?: string;
}

export class WebServer {
  private constructor(
    readonly app: FastifyInstance,
    readonly url: string,
    readonly modelName: string,
  ) {}

  /** The model's URL base on this server. */
  get modelUrl(): string {
    return new URL(`models/${encodeURIComponent(this.modelName)}/`, this.url).href;
  }

  static async start(o: WebServerOptions): Promise<WebServer> {
    const webRoot = o.webRoot ?? WEB_ROOT;
    if (!fs.existsSync(path.join(webRoot, 'index.html')) || !fs.existsSync(path.join(webRoot, 'kivi-worker.js'))) {
      throw new KiviError(`the web page is not built (${webRoot}): run npm run build`);
    }
    // Fail here, with the loader's own messages, rather than in the browser.
    const modelDir = path.resolve(o.modelDir);
    await readModelConfig(o.modelDir);
    if (!fs.existsSync(path.join(modelDir, 'tokenizer.json'))) throw new KiviError(`missing ${path.join(o.modelDir, 'tokenizer.json')}`);
    const modelName = path.basename(modelDir);
    const files = servedModelFiles(modelDir);

    // Loaded here, not at import: CLI commands that serve no page skip their start-up cost.
    const [{ default: Fastify }, { default: fastifyStatic }] = await Promise.all([import('fastify'), import('@fastify/static')]);
    // Folder names may be long; route parameters are checked against the model's name and files below.
    const app = Fastify({ logger: false, routerOptions: { maxParamLength: 4096 } });
    app.addHook('onSend', async (_req, reply) => {
      reply.header('Cross-Origin-Opener-Policy', 'same-origin');
      reply.header('Cross-Origin-Embedder-Policy', 'require-corp');
      reply.header('Cross-Origin-Resource-Policy', 'same-origin');
      reply.header('X-Content-Type-Options', 'nosniff');
    });
    await app.register(fastifyStatic, { root: webRoot, prefix: '/', index: 'index.html', dotfiles: 'deny' });
    // The parameters arrive decoded, so a folder named "my model #1 %+é" is /models/my%20model%20%231%20%25%2B%C3%A9/.
    app.get<{ Params: { name: string; file: string } }>('/models/:name/:file', (req, reply) => {
      const { name, file } = req.params;
      if (name !== modelName || !files.has(file)) {
        return reply.code(404).send({ error: `no such model file: ${req.url}` });
      }
      // Revalidate model files by ETag, so a changed model is never served stale from the browser cache.
      return reply.sendFile(file, modelDir, { cacheControl: true, maxAge: 0, dotfiles: 'deny' });
    });
    app.get('/models.json', async () => [{ name: modelName, url: `models/${encodeURIComponent(modelName)}/` }]);

    let url: string;
    try {
      url = await app.listen({ host: o.host ?? '127.0.0.1', port: o.port ?? 8080 });
    } catch (e) {
      await app.close();
      const err = e as NodeJS.ErrnoException;
      if (err.code === 'EADDRINUSE') throw new KiviError(`port ${o.port ?? 8080} on ${o.host ?? '127.0.0.1'} is already in use`);
      if (err.code === 'EADDRNOTAVAIL' || err.code === 'ENOTFOUND') throw new KiviError(`cannot listen on host ${o.host}`);
      if (err.code === 'EACCES') throw new KiviError(`no permission to listen on port ${o.port}`);
      throw e;
    }
    return new WebServer(app, url.endsWith('/') ? url : `${url}/`, modelName);
  }

  close(): Promise<void> {
    return this.app.close();
  }
}
