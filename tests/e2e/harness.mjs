// Runs a scenario function at <base> and at <base>/auth/v1 (where supabase-js
// calls the API), printing `ok <tag>` or the failure, then exits non-zero if
// either failed.
export async function runEverywhere(base, scenarios) {
  let failed = false;
  for (const [url, tag] of [[base, 'root'], [`${base}/auth/v1`, 'prefixed']]) {
    try {
      await scenarios(url, tag);
      console.log(`ok ${tag} (${url})`);
    } catch (e) {
      failed = true;
      console.error(`FAILED ${tag} (${url}):`, e);
    }
  }
  process.exit(failed ? 1 : 0);
}
