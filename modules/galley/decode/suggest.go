package decode

import "strings"

// suggest returns ` (did you mean "x"?)` for the candidate closest to s, or
// "" when none is close. Typos in field names are the commonest mistake in
// hand-written config; naming the intended field saves a trip to the docs.
func suggest(s string, candidates []string) string {
	best, bestDist := "", 3
	ls := strings.ToLower(strings.ReplaceAll(s, "_", ""))
	for _, c := range candidates {
		lc := strings.ToLower(c)
		if lc == ls {
			return ` (did you mean "` + c + `"?)`
		}
		if d := editDistance(ls, lc, bestDist); d < bestDist {
			best, bestDist = c, d
		}
	}
	// Short names are too easy to match by accident.
	if best == "" || len(s) <= 3 && bestDist > 1 {
		return ""
	}
	return ` (did you mean "` + best + `"?)`
}

// editDistance is the Levenshtein distance of a and b, or limit when it is at
// least limit. Stopping early keeps suggestion cheap for long field lists.
func editDistance(a, b string, limit int) int {
	if d := len(a) - len(b); d >= limit || -d >= limit {
		return limit
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		rowMin := cur[0]
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			rowMin = min(rowMin, cur[j])
		}
		if rowMin >= limit {
			return limit
		}
		prev, cur = cur, prev
	}
	return min(prev[len(b)], limit)
}
