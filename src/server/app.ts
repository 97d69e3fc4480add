/**
 * The OpenAI-compatible HTTP server (fastify): completions and chat completions with streaming, model
 * list, health and Prometheus metrics, over one model whose sequences share the batching engine under a
 * KV-memory budget. Every error is an OpenAI-style JSON error; nothing a client sends can crash it.
 *
 *   const server = await KiviServer.start(await KiviModel.load(dir), { kv: 'kivi2', budgetBytes: 2 ** 31 });
 *   console.log(server.url);   // http://127.0.0.1:8080
 *   await server.close();
 */
import * as path from 'node:path';
import type { FastifyError, FastifyInstance } from 'fastify';
import type { KiviModel } from '../api.js';
import { peakAllocatedBytes } from '../cache/budget.js';
import { type KvOption, toCacheSpec, validateSpec } from '../cache/spec.js';
import { checkGrid } from '../engine/chunks.js';
import { KiviError } from '../util/errors.js';
import { ChatFormatter, findChatTemplate } from './chat.js';
import { checkModelName, type GenerationContext, handleGeneration } from './generation.js';
import type { Registry } from './metrics.js';
import { errorBody } from './openai.js';
import { PrefixCache } from './prefix-cache.js';
import { DEFAULT_PREFIX_BLOCK, MemoryStore, type PrefixStore } from './prefix-store.js';
import { parseRedisUrl, RedisStore } from './redis-store.js';
import { formatBytes, Scheduler } from './scheduler.js';
import { RequestError } from './schemas.js';
import { ServerStats } from './stats.js';

export interface ServeOptions {
  /** Cache spec of every sequence (default kivi2). */
  kv?: KvOption;
  /** KV cache budget in bytes for all running sequences together (default 2 GiB). */
  budgetBytes?: number;
  /** Most requests waiting for memory before 429s (default 64). */
  maxQueue?: number;
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  /** Per-request limit in seconds, queueing included (default 600). */
  timeoutSeconds?: number;
  /** Largest request body in bytes (default 1 MiB). */
  bodyLimit?: number;
  /** The name clients send as `model` (default: the model directory's basename). */
  modelName?: string;
  /** Prefill prompts in chunks of at most this many tokens, one per engine step (default: whole prompts). */
  prefillChunk?: number;
  /** The prefix cache with an in-process store of this many bytes (LRU). */
  prefixCacheBytes?: number;
  /** The prefix cache with a Redis store shared by replicas: redis://HOST:PORT[/db]. */
  prefixStore?: string;
  /** Tokens per prefix-cache block (default 256). */
  prefixBlock?: number;
  /** Most milliseconds a prefix-store call may take (default 500). */
  prefixTimeoutMs?: number;
  /** Most bytes of prefix writes in flight (default 64 MiB). */
  prefixPendingBytes?: number;
  /** Where the server's few log lines go (default stderr). */
  log?: (line: string) => void;
}

export class KiviServer {
  private closing: Promise<void> | null = null;

  private constructor(
    readonly app: FastifyInstance,
    readonly scheduler: Scheduler,
    private readonly chat: ChatFormatter,
    readonly modelName: string,
    readonly url: string,
    /** The prefix cache, when one is configured. */
    readonly prefix: PrefixCache | null,
  ) {}

  static async start(model: KiviModel, opts: ServeOptions = {}): Promise<KiviServer> {
    const kv = opts.kv ?? 'kivi2';
    const spec = toCacheSpec(kv);
    validateSpec(spec, model.dims);
    const timeoutSeconds = opts.timeoutSeconds ?? 600;
    if (!(timeoutSeconds > 0)) throw new KiviError(`the request timeout must be positive, got ${timeoutSeconds}`);
    const budgetBytes = opts.budgetBytes ?? 2 * 1024 ** 3;
    // A budget that cannot hold one sequence of one token would refuse every request.
    const least = peakAllocatedBytes(spec, model.transformer.pool, 1);
    if (!(budgetBytes >= least)) {
      throw new KiviError(
        `the KV budget of ${formatBytes(budgetBytes)} cannot hold even one sequence of one token (${spec.name} needs ${formatBytes(least)} of cache pages)`,
      );
    }
    const grids: number[] = [];
    if (opts.prefillChunk !== undefined) grids.push(checkGrid(opts.prefillChunk, 'the prefill chunk'));
    const prefixStore = prefixStoreFor(opts);
    if (prefixStore) grids.push(checkGrid(opts.prefixBlock ?? DEFAULT_PREFIX_BLOCK, 'the prefix block'));
    const template = findChatTemplate(model.dir, model.tokenizer.config);
    // Checks the template parses; starts the prompt process, which close() stops.
    const chat = new ChatFormatter(model.tokenizer, template);
    // Last of the checks: the scheduler hooks into the engine, and close() unhooks it.
    const scheduler = new Scheduler(model.engine, {
      spec,
      pool: model.transformer.pool,
      budgetBytes,
      maxQueue: opts.maxQueue ?? 64,
      newCache: () => model.newCache(spec),
      grids,
    });
    const modelName = opts.modelName ?? path.basename(path.resolve(model.dir));
    const stats = new ServerStats();
    const prefix =
      prefixStore &&
      new PrefixCache({
        store: await prefixStore(),
        block: opts.prefixBlock ?? DEFAULT_PREFIX_BLOCK,
        grids,
        model: model.fingerprint,
        spec,
        shape: model.dims,
        backend: model.backend.name,
        timeoutMs: opts.prefixTimeoutMs ?? 500,
        maxPendingBytes: opts.prefixPendingBytes ?? 64 * 1024 ** 2,
      });
    const ctx: GenerationContext = { model, modelName, scheduler, stats, chat, timeoutMs: timeoutSeconds * 1000, prefix };
    // Fastify loads here, not at import: CLI commands that never serve skip its start-up cost.
    const { default: Fastify } = await import('fastify');
    const app = Fastify({ logger: false, bodyLimit: opts.bodyLimit ?? 1024 * 1024 });
    jsonBodies(app);
    const registry = stats.registry(scheduler, model.engine);
    prefix?.register(registry);
    routes(app, ctx, registry);
    let url: string;
    try {
      url = await app.listen({ host: opts.host ?? '127.0.0.1', port: opts.port ?? 8080 });
    } catch (e) {
      scheduler.close();
      await chat.close();
      await prefix?.close();
      const err = e as NodeJS.ErrnoException;
      if (err.code === 'EADDRINUSE') throw new KiviError(`port ${opts.port ?? 8080} on ${opts.host ?? '127.0.0.1'} is already in use`);
      if (err.code === 'EADDRNOTAVAIL' || err.code === 'ENOTFOUND') throw new KiviError(`cannot listen on host ${opts.host}`);
      if (err.code === 'EACCES') throw new KiviError(`no permission to listen on port ${opts.port}`);
      throw e;
    }
    return new KiviServer(app, scheduler, chat, modelName, url, prefix);
  }

  /** Stop accepting requests, cancel running and waiting sequences (freeing their caches), close connections. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      // Closing first refuses new requests (503) while the cancelled ones answer.
      const closed = this.app.close();
      this.scheduler.close();
      await this.chat.close();
      await this.prefix?.close();
      // A client's kept-alive connection would hold close() for the keep-alive timeout (72 s in fastify):
      // end each one as soon as its last response is out.
      const reaper = setInterval(() => this.app.server.closeIdleConnections(), 25);
      try {
        await closed;
      } finally {
        clearInterval(reaper);
      }
    })();
    return this.closing;
  }
}

/** Check the prefix-cache options (the CLI does before loading the model). */
export function checkPrefixOptions(opts: ServeOptions): void {
  prefixStoreFor(opts);
  if (opts.prefixBlock !== undefined) checkGrid(opts.prefixBlock, 'the prefix block');
  if (opts.prefillChunk !== undefined) checkGrid(opts.prefillChunk, 'the prefill chunk');
}

/**
 * The prefix store the options ask for, checked now and made later (after the other checks: a Redis
 * client connects as soon as it is made), or null for no prefix cache.
 */
function prefixStoreFor(opts: ServeOptions): (() => Promise<PrefixStore>) | null {
  const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const timeoutMs = opts.prefixTimeoutMs ?? 500;
  if (!(Number.isFinite(timeoutMs) && timeoutMs > 0)) throw new KiviError(`the prefix store timeout must be positive, got ${timeoutMs}`);
  if (opts.prefixStore !== undefined) {
    if (opts.prefixCacheBytes !== undefined) {
      throw new KiviError("--prefix-cache sizes the in-process prefix store; with --prefix-store the Redis server's maxmemory bounds it: give one of them");
    }
    parseRedisUrl(opts.prefixStore);
    const url = opts.prefixStore;
    return () => RedisStore.open(url, { timeoutMs, log });
  }
  if (opts.prefixCacheBytes !== undefined) {
    const n = opts.prefixCacheBytes;
    if (!(Number.isSafeInteger(n) && n > 0)) throw new KiviError(`the prefix cache size must be a positive number of bytes, got ${n}`);
    return async () => new MemoryStore(n);
  }
  if (opts.prefixBlock !== undefined) throw new KiviError('--prefix-block needs a prefix cache: give --prefix-cache SIZE or --prefix-store redis://HOST:PORT');
  return null;
}

/**
 * Request bodies are UTF-8 JSON and nothing else: each other kind gets an error that says what is wrong
 * (fastify's defaults would call invalid UTF-8 a length mismatch, and accept text/plain).
 */
function jsonBodies(app: FastifyInstance): void {
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (req, body, done) => {
    try {
      done(null, parseJsonBody(req.headers['content-type'], req.headers['content-encoding'], body as Buffer));
    } catch (e) {
      done(e as Error, undefined);
    }
  });
}

/** The checks of jsonBodies, in order: encoding, charset, UTF-8, JSON, no "__proto__" keys. */
export function parseJsonBody(contentType: string | undefined, contentEncoding: string | undefined, body: Buffer): unknown {
  const encoding = contentEncoding?.trim().toLowerCase();
  if (encoding && encoding !== 'identity') {
    throw new RequestError(`Content-Encoding "${contentEncoding}" is not supported: send the body uncompressed`, 415);
  }
  const charset = /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(contentType ?? '')?.[1]?.toLowerCase();
  if (charset && charset !== 'utf-8' && charset !== 'utf8') {
    throw new RequestError(`charset "${charset}" is not supported: send the JSON body as UTF-8`, 415);
  }
  if (body.length >= 2 && ((body[0] === 0xff && body[1] === 0xfe) || (body[0] === 0xfe && body[1] === 0xff) || body.includes(0))) {
    throw new RequestError('the request body is not UTF-8 (it looks like UTF-16): send the JSON body as UTF-8', 400);
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(body);
  } catch {
    throw new RequestError('the request body is not valid UTF-8', 400);
  }
  if (text.trim() === '') throw new RequestError('the request body is empty: send a JSON object', 400);
  let protoKey = false;
  let value: unknown;
  try {
    // JSON.parse makes "__proto__" an ordinary own key; refuse it anyway, so no later copy can turn it into a prototype.
    value = JSON.parse(text, (k, v) => {
      if (k === '__proto__') protoKey = true;
      return v;
    });
  } catch (e) {
    throw new RequestError(`the request body is not valid JSON: ${(e as Error).message}`, 400);
  }
  if (protoKey) throw new RequestError('the request body has a "__proto__" key, which is not a parameter', 400, '__proto__');
  return value;
}

function routes(app: FastifyInstance, ctx: GenerationContext, metrics: Registry): void {
  app.setErrorHandler((err: FastifyError | KiviError, _req, reply) => {
    if (err instanceof KiviError) {
      const re = err instanceof RequestError ? err : null;
      return reply.code(err.status).send(errorBody(err.status, err.message, re?.param ?? null, re?.code ?? null));
    }
    // fastify's own 4xx: malformed JSON, body too large (413), unsupported media type (415).
    const status = err.statusCode;
    if (status !== undefined && status >= 400 && status < 500) {
      return reply.code(status).send(errorBody(status, err.message, null, err.code ?? null));
    }
    process.stderr.write(`kivi serve: internal error: ${err.stack ?? err.message}\n`);
    return reply.code(500).send(errorBody(500, `internal error: ${err.message}`));
  });
  app.setNotFoundHandler((req, reply) => {
    reply.code(404).send(errorBody(404, `no route ${req.method} ${req.url}`, null, 'not_found'));
  });

  app.post('/v1/completions', (req, reply) => handleGeneration('completions', ctx, req.body, reply));
  app.post('/v1/chat/completions', (req, reply) => handleGeneration('chat', ctx, req.body, reply));

  const modelCard = { id: ctx.modelName, object: 'model', created: 0, owned_by: 'kivi' };
  app.get('/v1/models', async () => ({ object: 'list', data: [modelCard] }));
  app.get<{ Params: { id: string } }>('/v1/models/:id', async (req) => {
    checkModelName(ctx, req.params.id);
    return modelCard;
  });
  // 503 once the back end can compute no more (a GPU out of memory, or lost): every step would fail, so
  // whatever routes requests here should send them elsewhere.
  app.get('/health', async (_req, reply) => {
    const failure = ctx.model.backend.failure?.() ?? null;
    if (failure !== null) return reply.code(503).send({ status: 'error', model: ctx.modelName, error: failure });
    return { status: 'ok', model: ctx.modelName };
  });
  app.get('/metrics', async (_req, reply) => {
    reply.type('text/plain; version=0.0.4; charset=utf-8');
    return metrics.render();
  });
}
