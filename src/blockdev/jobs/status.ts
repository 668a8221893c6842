/**
 * The job status model as data: which status may follow which, and which
 * user verbs each status accepts. The facts are QEMU's (job.c's transition
 * and verb tables, qapi/job.json), checked against qemu-storage-daemon 7.2;
 * the Job class asserts every transition against TRANSITIONS and refuses
 * every verb not in VERBS with QEMU's message.
 */

export const JOB_STATUSES = [
  'undefined', 'created', 'running', 'paused', 'ready', 'standby',
  'waiting', 'pending', 'aborting', 'concluded', 'null',
] as const;
export type JobStatus = typeof JOB_STATUSES[number];

/** QAPI JobVerb of 7.2 (8.2 added 'change'). */
export const JOB_VERBS = ['cancel', 'pause', 'resume', 'set-speed', 'complete', 'dismiss', 'finalize'] as const;
export type JobVerb = typeof JOB_VERBS[number];

/** QAPI JobType of 7.2. */
export const JOB_TYPES = [
  'commit', 'stream', 'mirror', 'backup', 'create', 'amend',
  'snapshot-load', 'snapshot-save', 'snapshot-delete',
] as const;
export type JobType = typeof JOB_TYPES[number];

/** Status → the statuses it may move to. A transition to the same status is allowed only where listed (aborting). */
export const TRANSITIONS: Readonly<Record<JobStatus, readonly JobStatus[]>> = {
  undefined: ['created'],
  created: ['running', 'aborting', 'null'],
  running: ['paused', 'ready', 'waiting', 'aborting'],
  paused: ['running'],
  ready: ['standby', 'waiting', 'aborting'],
  standby: ['ready'],
  waiting: ['pending', 'aborting'],
  pending: ['aborting', 'concluded'],
  aborting: ['aborting', 'concluded'],
  concluded: ['null'],
  null: [],
};

/**
 * Verb → the statuses in which a user may apply it. 'complete' is accepted in
 * standby as well as ready: qsd 7.2 completes a paused mirror.
 */
export const VERBS: Readonly<Record<JobVerb, readonly JobStatus[]>> = {
  cancel: ['created', 'running', 'paused', 'ready', 'standby', 'waiting', 'pending'],
  pause: ['created', 'running', 'paused', 'ready', 'standby'],
  resume: ['created', 'running', 'paused', 'ready', 'standby'],
  'set-speed': ['created', 'running', 'paused', 'ready', 'standby'],
  complete: ['ready', 'standby'],
  dismiss: ['concluded'],
  finalize: ['pending'],
};

export function canTransition(from: JobStatus, to: JobStatus): boolean {
  return TRANSITIONS[from].includes(to);
}

export function verbAllowed(verb: JobVerb, status: JobStatus): boolean {
  return VERBS[verb].includes(status);
}

/** QEMU's refusal of a verb, naming the job's current status. */
export function verbRefusal(id: string, status: JobStatus, verb: JobVerb): string {
  return `Job '${id}' in state '${status}' cannot accept command verb '${verb}'`;
}

/** Ready for the user to complete it (QEMU job_is_ready). */
export function isReadyStatus(s: JobStatus): boolean {
  return s === 'ready' || s === 'standby';
}

/** Its run is over, successfully or not (QEMU job_is_completed). */
export function isCompletedStatus(s: JobStatus): boolean {
  return s === 'waiting' || s === 'pending' || s === 'aborting' || s === 'concluded' || s === 'null';
}
