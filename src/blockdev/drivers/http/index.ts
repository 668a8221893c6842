/**
 * driver=http and driver=https: a read-only protocol node backed by an image
 * on a web server (QEMU's block/curl.c). Files: options.ts (the options and
 * curl_open's checks), transport.ts (undici: pool, headers, timeouts,
 * redirects, proxy), proxy.ts (the proxy from the environment), readahead.ts
 * (read-ahead buffers, retries).
 */
import { BlockError } from '../../../util/errors.ts';
import type { Driver, DriverOps } from '../../driver.ts';
import type { ObjectType } from '../../../qapi/types.ts';
import { BlockdevOptionsCurlHttp, BlockdevOptionsCurlHttps, CURL_STRONG_OPTIONS, curlFilename, parseCurlOptions } from './options.ts';
import { CurlTransport, HttpError, describe } from './transport.ts';
import { ReadAhead } from './readahead.ts';

function curlDriver(protocol: 'http' | 'https', options: ObjectType): Driver {
  return {
    name: protocol,
    kind: 'protocol',
    options,
    strongOptions: CURL_STRONG_OPTIONS,
    filenameIsExact: true,
    protocols: [protocol],
    parseFilename: (filename) => ({ url: filename }),
    // QEMU's curl driver has no bdrv_get_allocated_file_size: no actual-size.
    noAllocatedSize: true,
    async open(o, ctx): Promise<DriverOps> {
      // QEMU's bdrv_apply_auto_read_only: read-write only with auto-read-only, which makes it read-only.
      if (!ctx.readOnly && !ctx.options['auto-read-only']) throw new BlockError('EPERM', 'curl driver does not support writes');
      const cfg = parseCurlOptions(protocol, o, ctx.objects);
      const t = new CurlTransport(cfg);
      let size: number;
      try {
        let head;
        try {
          head = await t.head();
        } catch (e) {
          throw new BlockError('EINVAL', `CURL: Error opening file: ${(e instanceof HttpError ? e : describe(e, cfg.timeoutMs, t.url)).message}`);
        }
        if (head.size === undefined) throw new BlockError('EINVAL', "CURL: Error opening file: Server didn't report file size.");
        if (!head.acceptRanges) throw new BlockError('EINVAL', "CURL: Error opening file: Server does not support 'range' (byte ranges).");
        size = head.size;
      } catch (e) {
        await t.close();
        throw e;
      }
      const cache = new ReadAhead(t, size, cfg.readahead, ctx.log);
      const filename = curlFilename(cfg);
      return {
        length: () => size,
        openedReadOnly: !ctx.readOnly,
        limits: { alignment: 1, canFua: false, canZero: false, canTrim: false },
        read: (offset, buf) => cache.read(offset, buf),
        filename: () => filename,
        info: () => ({}),
        async close() { cache.clear(); await t.close(); },
      };
    },
  };
}

export const httpDriver = curlDriver('http', BlockdevOptionsCurlHttp);
export const httpsDriver = curlDriver('https', BlockdevOptionsCurlHttps);
