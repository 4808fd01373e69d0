// Type-checks every dashboard JSON against Grafana's own dashboard schema: `npx tsc --noEmit -p dashboards`
// (run by tests/tests/dashboards.rs). Nothing here runs; the assignments are the check.
import type { Dashboard } from '@grafana/schema';

import overview from '../netguard-overview.json';

// TypeScript types an imported JSON file with widened literals ("timeseries" is `string`, 1 is
// `number`), so it can never match a literal union such as `FieldColorModeId` or `VariableType`.
// `Widen` relaxes exactly those unions to their base type and keeps everything else: a number where
// the schema wants a string, an object where it wants an array, or a missing required field (a panel's
// `type`, `fieldConfig.defaults`, a variable's `name`, `schemaVersion`) still fails the build. The
// values of those unions (panel types, datasource references) are checked by tests/tests/dashboards.rs.
type Widen<T> = T extends string
  ? string
  : T extends number
    ? number
    : T extends boolean
      ? boolean
      : T extends ReadonlyArray<infer U>
        ? Array<Widen<U>>
        : T extends object
          ? { [K in keyof T]: Widen<T[K]> }
          : T;

export type DashboardJson = Widen<Dashboard>;

export const dashboards: DashboardJson[] = [overview];
