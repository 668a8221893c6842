/**
 * The drivers of the filter nodes jobs insert, as qsd names them:
 * 'mirror_top' (mirror, active commit), 'commit_top' (intermediate commit)
 * and backup's 'copy-before-write'. The user cannot blockdev-add them; they
 * are nodes of the graph for the job's lifetime: query-named-block-nodes
 * lists them under the job's filter-node-name or a generated name, and the
 * users of the node below are theirs meanwhile (surgery/filter.ts puts them
 * in and takes them out). Their ops come from the job: commit's filters only
 * pass requests on (no ops), mirror's are in mirror-top.ts, backup's in
 * copy-before-write.ts.
 */
import { BlockError } from '../../util/errors.ts';
import { obj } from '../../qapi/types.ts';
import type { Driver } from '../driver.ts';

export type JobFilterName = 'mirror_top' | 'commit_top' | 'copy-before-write';

/**
 * Which job filters hold their child for their job (Driver.jobFilter):
 * mirror refuses a node below one, backup names the job.
 */
const HOLDS_CHILD: Record<JobFilterName, boolean> = { mirror_top: true, 'copy-before-write': true, commit_top: false };

/** A driver object for filters that jobs insert and the user cannot blockdev-add. */
function internalFilterDriver(name: JobFilterName): Driver {
  return {
    name,
    kind: 'filter',
    jobFilter: HOLDS_CHILD[name],
    options: obj(`BlockdevOptions-${name}`, []),
    open() { return Promise.reject(new BlockError('EINVAL', `Driver '${name}' cannot be opened with blockdev-add`)); },
  };
}

const drivers = new Map<JobFilterName, Driver>();

/** The (one) driver object of a job filter. */
export function jobFilterDriver(name: JobFilterName): Driver {
  let d = drivers.get(name);
  if (!d) drivers.set(name, (d = internalFilterDriver(name)));
  return d;
}
