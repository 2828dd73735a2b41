package api

import "strconv"

// Plural counts n of a thing for people to read: "1 group", "12 groups".
// The command line and the web interface share it, as they share
// FormatCell.
func Plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}
