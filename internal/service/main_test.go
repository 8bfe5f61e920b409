package service_test

import (
	"io"
	"log"
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	// connector-sdk logs every invocation through the standard logger.
	log.SetOutput(io.Discard)
	os.Exit(m.Run())
}
