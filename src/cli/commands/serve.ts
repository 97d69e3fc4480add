/** `kivi serve`: the OpenAI-compatible HTTP server until SIGINT/SIGTERM. */
import { type Command, Option } from 'commander';
import { KiviModel } from '../../api.js';
import type { ServeOptions } from '../../server/app.js';
import { DEFAULT_PREFIX_BLOCK } from '../../server/prefix-store.js';
import { formatBytes } from '../../server/scheduler.js';
import { backendOption, type CommonOpts, kvOption, loadOptions, randomWeightsOption, threadsOption, weightsOption } from '../common.js';
import { bytes, float, int } from '../parse.js';

interface Opts extends CommonOpts {
  kvBudget: number;
  maxQueue: number;
  host: string;
  port: number;
  timeout: number;
  threads: number;
  prefillChunk?: number;
  prefixCache?: number;
  prefixStore?: string;
  prefixBlock?: number;
  prefixTimeout: number;
}

export function register(program: Command): void {
  const cmd = program
    .command('serve')
    .description('serve the model over an OpenAI-compatible HTTP API (completions, chat, streaming)')
    .requiredOption('--model <dir>', 'model directory (Hugging Face format)')
    .addOption(
      new Option('--kv-budget <size>', 'KV cache memory for all running sequences together (e.g. 2GiB, 512MB)').argParser(bytes).default(2 * 1024 ** 3, '2GiB'),
    )
    .option('--max-queue <n>', 'most requests waiting for memory; more get 429', int(0), 64)
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--port <port>', 'port to listen on (0 = any free port)', int(0, 65535), 8080)
    .option('--timeout <seconds>', 'per-request limit, waiting included', float(0, 1e6, { minExclusive: true }), 600)
    .option(
      '--prefill-chunk <n>',
      'prefill prompts in chunks of at most N tokens, one per step, so long prompts do not stall other streams (default: whole prompts)',
      int(1),
    )
    .option('--prefix-cache <size>', 'turn on the prefix cache with an in-process store of this size (LRU), e.g. 512MiB', bytes)
    .option('--prefix-store <url>', 'turn on the prefix cache with a Redis store shared by replicas: redis://HOST:PORT')
    .option('--prefix-block <n>', `prefix-cache block in tokens: prompts are prefilled and stored block by block (default ${DEFAULT_PREFIX_BLOCK})`, int(1))
    .option('--prefix-timeout <ms>', 'most milliseconds one prefix-store call may take (then: cold prefill)', float(0, 1e6, { minExclusive: true }), 500);
  kvOption(cmd);
  backendOption(cmd);
  threadsOption(cmd);
  randomWeightsOption(cmd);
  weightsOption(cmd);
  cmd.action(async (o: Opts) => {
    const opts: ServeOptions = {
      kv: o.kv,
      budgetBytes: o.kvBudget,
      maxQueue: o.maxQueue,
      host: o.host,
      port: o.port,
      timeoutSeconds: o.timeout,
      prefillChunk: o.prefillChunk,
      prefixCacheBytes: o.prefixCache,
      prefixStore: o.prefixStore,
      prefixBlock: o.prefixBlock,
      prefixTimeoutMs: o.prefixTimeout,
    };
    // The server's modules (Fastify, schemas, chat templates) load only for this command.
    const { checkPrefixOptions, KiviServer } = await import('../../server/app.js');
    checkPrefixOptions(opts); // before the model loads: a bad flag fails fast
    const model = await KiviModel.load(o.model, { kv: o.kv, ...loadOptions(o) });
    // Compile (WebGPU) and warm the kernels now, so the first request does not wait for them.
    try {
      await model.warmUp();
    } catch (e) {
      model.dispose();
      throw e;
    }
    const server = await KiviServer.start(model, opts);
    const prefix = server.prefix ? `, prefix cache ${server.prefix.store.description}, blocks of ${server.prefix.opts.block}` : '';
    process.stderr.write(
      `kivi: serving "${server.modelName}" at ${server.url} (kv ${o.kv.name}, KV budget ${formatBytes(o.kvBudget)}, queue ${o.maxQueue}${prefix})\n`,
    );
    await new Promise<void>((resolve) => {
      const stop = (sig: string) => {
        process.stderr.write(`kivi: ${sig}: shutting down\n`);
        server.close().finally(() => {
          model.dispose();
          resolve();
        });
      };
      process.once('SIGINT', () => stop('SIGINT'));
      process.once('SIGTERM', () => stop('SIGTERM'));
    });
  });
}
