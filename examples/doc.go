// Package examples holds example mesh configurations. It has no code; its
// tests check that each example validates the way its README says.
package examples
