/** `kivi web`: serve the browser demo and a model directory until SIGINT/SIGTERM. */
import type { Command } from 'commander';
import { WebServer } from '../../web/server.js';
import { int } from '../parse.js';

interface Opts {
  model: string;
  host: string;
  port: number;
}

export function register(program: Command): void {
  program
    .command('web')
    .description('serve the browser demo: the model runs in the page (Web Worker), loaded from this server')
    .requiredOption('--model <dir>', 'model directory (Hugging Face format) to serve to the page')
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--port <port>', 'port to listen on (0 = any free port)', int(0, 65535), 8080)
    .action(async (o: Opts) => {
      const server = await WebServer.start({ modelDir: o.model, host: o.host, port: o.port });
      process.stderr.write(`kivi: the browser demo for "${server.modelName}" is at ${server.url} (the model is served from ${server.modelUrl})\n`);
      await new Promise<void>((resolve) => {
        const stop = (sig: string) => {
          process.stderr.write(`kivi: ${sig}: shutting down\n`);
          server.close().then(resolve, resolve);
        };
        process.once('SIGINT', () => stop('SIGINT'));
        process.once('SIGTERM', () => stop('SIGTERM'));
      });
    });
}
