// Runs a scenario function at <base> and at <base>/auth/v1 (where supabase-js
// calls the API), printing `ok <tag>` or the failure, then exits non-zero if
// either failed; `cleanup` (a browser, a server) runs before the exit.
export async function runEverywhere(base, scenarios, cleanup) {
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
  if (cleanup) await cleanup();
  process.exit(failed ? 1 : 0);
}
