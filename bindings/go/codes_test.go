package sfc_test

import (
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	sfc "github.com/sfc/sfc/bindings/go"
)

// Every protocol error code of the core (ErrorCode::as_str in crates/sfc-proto) has its Code*
// constant here with the same string, and the README's table lists the ones a service meets.
func TestRegistryCodesMatchTheProtocol(t *testing.T) {
	codes := map[string]string{
		"CodeBadPreamble":        sfc.CodeBadPreamble,
		"CodeUnsupportedVersion": sfc.CodeUnsupportedVersion,
		"CodeFrameTooLarge":      sfc.CodeFrameTooLarge,
		"CodeEmptyFrame":         sfc.CodeEmptyFrame,
		"CodeBadJSON":            sfc.CodeBadJSON,
		"CodeUnknownMessage":     sfc.CodeUnknownMessage,
		"CodeInvalidMessage":     sfc.CodeInvalidMessage,
		"CodeUnexpectedMessage":  sfc.CodeUnexpectedMessage,
		"CodeUnsupportedCodec":   sfc.CodeUnsupportedCodec,
		"CodeHandshakeTimeout":   sfc.CodeHandshakeTimeout,
		"CodeLivenessTimeout":    sfc.CodeLivenessTimeout,
		"CodeSuperseded":         sfc.CodeSuperseded,
		"CodeInvalidField":       sfc.CodeInvalidField,
		"CodeRateLimited":        sfc.CodeRateLimited,
		"CodeTooManyConnections": sfc.CodeTooManyConnections,
		"CodeNotAuthorized":      sfc.CodeNotAuthorized,
		"CodeUnknownInstance":    sfc.CodeUnknownInstance,
		"CodeNotOnline":          sfc.CodeNotOnline,
		"CodeUnknownWatch":       sfc.CodeUnknownWatch,
		"CodeCommandTimeout":     sfc.CodeCommandTimeout,
		"CodeLagged":             sfc.CodeLagged,
		"CodeShuttingDown":       sfc.CodeShuttingDown,
		"CodeInternal":           sfc.CodeInternal,
		"CodeUnknownCommand":     sfc.CodeUnknownCommand,
		"CodeSlowConsumer":       sfc.CodeSlowConsumer,
		"CodeTooManyInstances":   sfc.CodeTooManyInstances,
	}
	src, err := os.ReadFile("../../crates/sfc-proto/src/protocol/message.rs")
	if err != nil {
		t.Fatal(err)
	}
	body := string(src)
	body = body[strings.Index(body, "pub fn as_str(self)"):]
	body = body[:strings.Index(body, "\n    }\n")]
	var core []string
	for _, m := range regexp.MustCompile(`ErrorCode::(\w+) => "([a-z-]+)"`).FindAllStringSubmatch(body, -1) {
		core = append(core, m[2])
		// ErrorCode::TooManyInstances -> CodeTooManyInstances (BadJson -> CodeBadJSON).
		name := "Code" + strings.Replace(m[1], "Json", "JSON", 1)
		if got, ok := codes[name]; !ok || got != m[2] {
			t.Errorf("%s = %q, want %q (ErrorCode::%s)", name, got, m[2], m[1])
		}
	}
	var ours []string
	for _, v := range codes {
		ours = append(ours, v)
	}
	sort.Strings(core)
	sort.Strings(ours)
	if strings.Join(core, ",") != strings.Join(ours, ",") {
		t.Errorf("codes of the core:\n%v\nconstants here:\n%v", core, ours)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{sfc.CodeNotAuthorized, sfc.CodeUnsupportedVersion, sfc.CodeSlowConsumer, sfc.CodeTooManyInstances} {
		if !strings.Contains(string(readme), "`"+c+"`") {
			t.Errorf("README.md does not list %s", c)
		}
	}
}
