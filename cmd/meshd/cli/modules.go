package cli

// The modules compiled into meshd. Each registers itself from init();
// these imports are all it takes to include one.
import (
	_ "github.com/meshd/meshd/modules/galley"
)
