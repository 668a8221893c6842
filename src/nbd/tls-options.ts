/**
 * Negotiation on a server with tls-creds (doc/proto.md, "TLS support",
 * FORCEDTLS): until the client has upgraded with NBD_OPT_STARTTLS, every
 * option but STARTTLS and ABORT is answered NBD_REP_ERR_TLS_REQD, and
 * NBD_OPT_EXPORT_NAME, which cannot be answered with an error, ends the
 * session. Once TLS is on, the ordinary handlers answer, and a second
 * STARTTLS is "TLS already enabled". Texts are qsd's (nbd/server.c).
 *
 * Where blockd follows the spec rather than qsd 7.2: NBD_OPT_ABORT before
 * TLS is acknowledged (qsd answers it NBD_REP_ERR_TLS_REQD, then hangs up).
 */
import { Opt, Rep, optName } from '../nbd-protocol/constants.ts';
import { buildOptionError, buildOptionReply } from '../nbd-protocol/option-replies.ts';
import { ANY_OTHER_OPTION, OPTION_HANDLERS, type OptionHandler } from './options.ts';

const hex = (option: number) => `0x${option.toString(16)}`;

/** The option table of one connection; `tlsActive()` tells whether STARTTLS has completed on it. */
export function tlsOptionHandlers(tlsActive: () => boolean): Readonly<Record<number, OptionHandler>> {
  const beforeTls = (inner: OptionHandler | undefined): OptionHandler => (env, s, option, data, length) => {
    if (tlsActive()) {
      return inner ? inner(env, s, option, data, length)
        : { replies: [buildOptionError(option, Rep.ERR_UNSUP, `Unsupported option ${option} (${optName(option)})`)], next: 'options' };
    }
    if (option === Opt.EXPORT_NAME) return { replies: [], next: 'close', reason: `Option ${hex(option)} not permitted before TLS` };
    if (option === Opt.ABORT) return inner!(env, s, option, data, length);
    return { replies: [buildOptionError(option, Rep.ERR_TLS_REQD, `Option ${hex(option)} not permitted before TLS`)], next: 'options' };
  };

  const starttls: OptionHandler = (_env, _s, option, _data, length) => {
    if (tlsActive()) {
      if (length > 0) return { replies: [buildOptionError(option, Rep.ERR_INVALID, `option '${optName(option)}' has unexpected length`)], next: 'options' };
      return { replies: [buildOptionError(option, Rep.ERR_INVALID, 'TLS already enabled')], next: 'options' };
    }
    // A client that cannot start TLS correctly is dropped (qsd: nbd_reject_length, fatal).
    if (length > 0) {
      return {
        replies: [buildOptionError(option, Rep.ERR_INVALID, `option '${optName(option)}' has unexpected length`)],
        next: 'close', reason: 'OPT_STARTTLS with data',
      };
    }
    return { replies: [buildOptionReply(option, Rep.ACK)], next: 'upgrade' };
  };

  const table: Record<number, OptionHandler> = {};
  for (const [opt, h] of Object.entries(OPTION_HANDLERS)) table[Number(opt)] = beforeTls(h);
  table[Opt.STARTTLS] = starttls;
  table[ANY_OTHER_OPTION] = beforeTls(undefined);
  return table;
}
