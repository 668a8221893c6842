/**
 * BlockdevOptionsCurlHttp / BlockdevOptionsCurlHttps (qapi/block-core.json in
 * QEMU 7.2) and the checks block/curl.c's curl_open makes of them, with its
 * texts and in its order. Secrets (cookie-secret, password-secret,
 * proxy-password-secret) are read here, as QEMU reads them while opening.
 */
import { obj, opt, req, type Member, type ObjectType } from '../../../qapi/types.ts';
import { BlockError } from '../../../util/errors.ts';
import { passwordFromSecret } from '../../../crypto/luks1-open.ts';
import type { ObjectLookup } from '../../../objects/lookup.ts';

/** QEMU's CURL_BLOCK_OPT_READAHEAD_DEFAULT. */
export const READAHEAD_DEFAULT = 256 * 1024;
/** QEMU's CURL_BLOCK_OPT_TIMEOUT_DEFAULT (seconds). */
export const TIMEOUT_DEFAULT = 5;
/** QEMU's CURL_TIMEOUT_MAX (seconds). */
export const TIMEOUT_MAX = 10000;

const base: Member[] = [
  req('url', 'str', 'URL of the image file'),
  opt('readahead', 'int', 'size of the read-ahead cache; must be a multiple of 512 (defaults to 256 kB)'),
  opt('timeout', 'int', 'timeout of each request, in seconds (defaults to 5; 0: none)'),
  opt('username', 'str', 'username for authentication (defaults to none)'),
  opt('password-secret', 'str', 'ID of a secret object providing a password for authentication'),
  opt('proxy-username', 'str', 'username for proxy authentication (defaults to none)'),
  opt('proxy-password-secret', 'str', 'ID of a secret object providing a password for proxy authentication'),
];
const cookie: Member[] = [
  opt('cookie', 'str', 'list of cookies to set, "name1=content1; name2=content2;" (defaults to none)'),
  opt('cookie-secret', 'str', 'ID of a secret object providing the cookie data'),
];

export const BlockdevOptionsCurlHttp: ObjectType = obj('BlockdevOptionsCurlHttp', [...base, ...cookie]);
export const BlockdevOptionsCurlHttps: ObjectType = obj('BlockdevOptionsCurlHttps', [
  ...base, cookie[0]!, opt('sslverify', 'bool', "whether to verify the SSL certificate's validity (defaults to true)"), cookie[1]!,
]);

/** QEMU's curl_strong_runtime_opts: what decides the data a node reads. */
export const CURL_STRONG_OPTIONS = ['url', 'sslverify', 'cookie', 'cookie-secret', 'username', 'password-secret', 'proxy-username', 'proxy-password-secret'];

export interface CurlConfig {
  protocol: 'http' | 'https';
  url: string;
  readahead: number;
  /** Whole-request time limit in ms; 0: none (CURLOPT_TIMEOUT 0). */
  timeoutMs: number;
  sslverify: boolean;
  cookie?: string;
  username?: string;
  password?: string;
  proxyUsername?: string;
  proxyPassword?: string;
}

function secretText(objects: ObjectLookup, id: string): string {
  return passwordFromSecret(id, objects.secret(id)).toString('utf8');
}

/** curl_open's option checks, in QEMU's order and with its texts. */
export function parseCurlOptions(protocol: 'http' | 'https', o: Record<string, unknown>, objects: ObjectLookup): CurlConfig {
  const readahead = Number(o.readahead ?? READAHEAD_DEFAULT);
  // QEMU reads it as a size (unsigned): a negative value is a huge one, not a multiple of 512 either way.
  if (readahead % 512 !== 0 || readahead < 0) {
    throw new BlockError('EINVAL', `HTTP_READAHEAD_SIZE ${readahead} is not a multiple of 512`);
  }
  const timeout = Number(o.timeout ?? TIMEOUT_DEFAULT);
  if (timeout > TIMEOUT_MAX || timeout < 0) throw new BlockError('EINVAL', 'timeout parameter is too large or negative');
  const sslverify = o.sslverify === undefined ? true : o.sslverify === true;
  if (o.cookie !== undefined && o['cookie-secret'] !== undefined) {
    throw new BlockError('EINVAL', 'curl driver cannot handle both cookie and cookie secret');
  }
  const cookie = o['cookie-secret'] !== undefined ? secretText(objects, o['cookie-secret'] as string) : o.cookie as string | undefined;
  const url = o.url as string;
  if (!url.startsWith(`${protocol}://`)) {
    throw new BlockError('EINVAL', `${protocol} curl driver cannot handle the URL '${url}' (does not start with '${protocol}://')`);
  }
  const password = o['password-secret'] !== undefined ? secretText(objects, o['password-secret'] as string) : undefined;
  const proxyPassword = o['proxy-password-secret'] !== undefined ? secretText(objects, o['proxy-password-secret'] as string) : undefined;
  return {
    protocol, url, readahead, timeoutMs: timeout * 1000, sslverify, cookie,
    username: o.username as string | undefined, password,
    proxyUsername: o['proxy-username'] as string | undefined, proxyPassword,
  };
}

/**
 * QEMU's curl_refresh_filename: the URL is the node's filename unless an
 * option that changes what it reads is set (then it shows as json:{...}).
 */
export function curlFilename(c: CurlConfig): string | undefined {
  const plain = c.sslverify && c.cookie === undefined && c.username === undefined && c.password === undefined
    && c.proxyUsername === undefined && c.proxyPassword === undefined;
  return plain ? c.url : undefined;
}
