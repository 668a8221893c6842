/** The NBD codecs this driver uses, in one place (src/nbd-protocol is shared with the server). */
export * from '../../../nbd-protocol/constants.ts';
export { ByteQueue } from '../../../nbd-protocol/byte-queue.ts';
export { buildClientFlags, decodeExportNameReply, decodeGreeting } from '../../../nbd-protocol/handshake.ts';
export { buildExportNameData, buildInfoRequestData, buildMetaContextRequestData, buildOptionRequest } from '../../../nbd-protocol/option-requests.ts';
export { decodeOptionReply, isErrorReply, parseInfoPayload, parseMetaContextPayload, type OptionReply } from '../../../nbd-protocol/option-replies.ts';
export { buildRequest } from '../../../nbd-protocol/requests.ts';
export { ReplyDecoder, type DecodedReply } from '../../../nbd-protocol/reply-decoder.ts';
