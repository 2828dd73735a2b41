package web

// failureHelp explains a failure code to staff (output checkers, reviewers,
// admins) in words: what went wrong at the site and where to look. Codes are
// the sandbox's error classes and the broker's lease_expired; they are
// staff-only, since whether and how a run fails can depend on the data.
func failureHelp(code string) string {
	switch code {
	case "timeout":
		return "the query ran longer than the site allows one job; a simpler query, or a site with a longer job_timeout, would finish"
	case "memory":
		return "the query needed more memory than the site allows one job (its memory_limit)"
	case "too_large":
		return "the protected result had more rows or bytes than the site lets out"
	case "crashed":
		return "the sandbox process died without answering (killed, or crashed); the site's log has the detail"
	case "unavailable":
		return "the site could not run it: its data could not be opened, an isolation layer it requires is missing, or the data changed during the run; the site's log says which"
	case "refused":
		return "the site's own compiler refused the query, so the site's catalog differs from the one the broker checked it against"
	case "invalid":
		return "the job the site received was malformed (its SQL did not match the approved hash, or its ε was out of range)"
	case "internal":
		return "an error inside the sandbox; the detail stays in the site's log"
	case "lease_expired":
		return "the site agent took the job but stopped reporting before it finished (it was restarted, or lost its connection to the broker)"
	case "federation_deadline":
		return "the query runs at several sites, and not every site reported before the broker's federation_deadline; sites that never started were refunded in their own ledgers (the project's charge stands), the notice lists each site's state"
	case "federation_site_failed":
		return "the query runs at several sites, and one site's part failed for good, which fails the query as a whole; sites that never started were refunded in their own ledgers (the project's charge stands), the notice lists each site's state"
	case "federation_combine":
		return "the query runs at several sites, and the broker could not combine the sites' parts (they did not match the approved query); the broker's log has the detail"
	}
	return "the site reported this class of failure; the site's log has the detail"
}
