// Package safetext handles text a peer supplies (nicknames, heads, reasons)
// where it meets a length limit or a log line: cut only between two UTF-8
// characters, and quoted before it can forge a line or send a terminal
// escape. The sender and the aggregator share it.
package safetext

import (
	"strconv"
	"unicode/utf8"
)

// Prefix is the longest prefix of s of at most n bytes (n >= 0) that ends
// between two UTF-8 characters: s itself when it is not longer than n.
func Prefix(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// ForLog is s as it may go into a log line: unchanged when it is valid
// UTF-8 and every character is printable (strconv.IsPrint), else Go-quoted,
// so that it cannot add lines to the log or send terminal escapes (a
// newline, ESC, BEL) to whoever reads it.
func ForLog(s string) string {
	if !utf8.ValidString(s) {
		return strconv.Quote(s)
	}
	for _, r := range s {
		if !strconv.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}
