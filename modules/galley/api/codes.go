package api

// Code identifies the kind of a finding. Codes are stable: scripts and
// suppressions key on them, so a code is never reused for another meaning.
//
//   - GAL1xxx: decoding (syntax, schema, unknown fields)
//   - GAL2xxx: per-object validation (Istio's field rules)
//   - GAL3xxx: whole-set analysis (references and conflicts between objects)
//   - GAL4xxx: serving (external validators)
//
// Findings of external validators (Validator) carry the validator's own
// codes.
type Code string

// Decoding codes.
const (
	CodeSyntax         Code = "GAL1001"
	CodeNotAnObject    Code = "GAL1002"
	CodeUnknownKind    Code = "GAL1003"
	CodeBadAPIVersion  Code = "GAL1004"
	CodeMissingName    Code = "GAL1005"
	CodeUnknownField   Code = "GAL1006"
	CodeBadValue       Code = "GAL1007"
	CodeDuplicateField Code = "GAL1008"
	CodeOneofConflict  Code = "GAL1009"
	CodeIgnoredKind    Code = "GAL1010"
	CodeUnreadable     Code = "GAL1011"
	CodeTooComplex     Code = "GAL1012"
)

// Validation codes.
const (
	CodeMetadata      Code = "GAL2001"
	CodeRequired      Code = "GAL2002"
	CodeHost          Code = "GAL2003"
	CodePort          Code = "GAL2004"
	CodePortNameProto Code = "GAL2005"
	CodeRegex         Code = "GAL2006"
	CodeDuration      Code = "GAL2007"
	CodePercent       Code = "GAL2008"
	CodeWeight        Code = "GAL2009"
	CodeWeightSum     Code = "GAL2010"
	CodeHeader        Code = "GAL2011"
	CodeSubset        Code = "GAL2012"
	CodeSelector      Code = "GAL2013"
	CodeEmptySelector Code = "GAL2014"
	CodeTLS           Code = "GAL2015"
	CodeRetry         Code = "GAL2016"
	CodeFault         Code = "GAL2017"
	CodeMirror        Code = "GAL2018"
	CodeCORS          Code = "GAL2019"
	CodeDelegate      Code = "GAL2020"
	CodeResolution    Code = "GAL2021"
	CodeAddress       Code = "GAL2022"
	CodeAuthzAction   Code = "GAL2023"
	CodeIdentity      Code = "GAL2024"
	CodeCondition     Code = "GAL2025"
	CodeJWT           Code = "GAL2026"
	CodeMTLS          Code = "GAL2027"
	CodeServer        Code = "GAL2028"
	CodeMatch         Code = "GAL2029"
	CodeRouteConflict Code = "GAL2030"
	CodeRedirect      Code = "GAL2031"
	CodeTrafficPolicy Code = "GAL2032"
	CodeExportTo      Code = "GAL2033"
	CodeSidecar       Code = "GAL2034"
	CodeWorkload      Code = "GAL2035"
	CodeDuplicate     Code = "GAL2036"
	CodeDeprecated    Code = "GAL2037"
	CodeSurprising    Code = "GAL2038"
)

// Analysis codes.
const (
	CodeDuplicateObject  Code = "GAL3001"
	CodeUnknownSubset    Code = "GAL3002"
	CodeUnknownHost      Code = "GAL3003"
	CodeUnverifiedHost   Code = "GAL3004"
	CodeUnknownGateway   Code = "GAL3005"
	CodeVSConflict       Code = "GAL3006"
	CodeVSMerged         Code = "GAL3007"
	CodeDRConflict       Code = "GAL3008"
	CodeDRMerged         Code = "GAL3009"
	CodeShadowedRoute    Code = "GAL3010"
	CodeMTLSConflict     Code = "GAL3011"
	CodeSelectorNoMatch  Code = "GAL3012"
	CodeUnknownDelegate  Code = "GAL3013"
	CodeSubsetNoMatch    Code = "GAL3014"
	CodeHostNotOnGateway Code = "GAL3015"
	CodePortRequired     Code = "GAL3016"
	CodeProxylessAuthz   Code = "GAL3017"
	CodeAuthzOverlap     Code = "GAL3018"
	CodePrincipalFormat  Code = "GAL3019"
)

// Serving codes.
const (
	CodeValidatorFailed Code = "GAL4001"
)

// CodeInfo documents a code: its usual severity, the stage that reports it,
// a one-line title and the closest istioctl analyze message, if any. The
// README's table is checked against this list by a test.
type CodeInfo struct {
	Code     Code
	Severity Severity
	Stage    string
	Title    string
	Istio    string
}

var codeTable = [...]CodeInfo{
	{CodeSyntax, SeverityError, "decode", "malformed YAML or JSON", ""},
	{CodeNotAnObject, SeverityError, "decode", "document is not an object with apiVersion and kind", ""},
	{CodeUnknownKind, SeverityError, "decode", "unknown or unsupported kind in an Istio API group", ""},
	{CodeBadAPIVersion, SeverityError, "decode", "apiVersion not served for this kind", ""},
	{CodeMissingName, SeverityError, "decode", "metadata.name is missing", ""},
	{CodeUnknownField, SeverityError, "decode", "unknown field", "IST0106"},
	{CodeBadValue, SeverityError, "decode", "value has the wrong type or cannot be parsed", "IST0106"},
	{CodeDuplicateField, SeverityError, "decode", "field given twice in one mapping", ""},
	{CodeOneofConflict, SeverityError, "decode", "more than one of mutually exclusive fields set", "IST0106"},
	{CodeIgnoredKind, SeverityWarning, "decode", "object of a non-Istio kind, ignored", ""},
	{CodeUnreadable, SeverityError, "decode", "file or directory cannot be read", ""},
	{CodeTooComplex, SeverityError, "decode", "document too large or too deeply nested", ""},

	{CodeMetadata, SeverityError, "validate", "invalid name, namespace, label or annotation", "IST0106"},
	{CodeRequired, SeverityError, "validate", "required field missing or empty", "IST0106"},
	{CodeHost, SeverityError, "validate", "invalid host name or wildcard", "IST0106"},
	{CodePort, SeverityError, "validate", "port number out of range 1..65535", "IST0106"},
	{CodePortNameProto, SeverityError, "validate", "invalid port name or protocol", "IST0106"},
	{CodeRegex, SeverityError, "validate", "invalid RE2 regular expression", "IST0106"},
	{CodeDuration, SeverityError, "validate", "invalid duration (too small, negative or finer than 1ms)", "IST0106"},
	{CodePercent, SeverityError, "validate", "percentage out of range 0..100", "IST0106"},
	{CodeWeight, SeverityError, "validate", "negative weight, or all weights zero", "IST0106"},
	{CodeWeightSum, SeverityWarning, "validate", "route weights do not sum to 100", ""},
	{CodeHeader, SeverityError, "validate", "invalid header name or value", "IST0106"},
	{CodeSubset, SeverityError, "validate", "invalid or duplicate subset", "IST0106"},
	{CodeSelector, SeverityError, "validate", "invalid label selector or labels", "IST0106"},
	{CodeEmptySelector, SeverityWarning, "validate", "selector without labels selects every workload in the namespace", "IST0133"},
	{CodeTLS, SeverityError, "validate", "invalid TLS settings", "IST0106"},
	{CodeRetry, SeverityError, "validate", "invalid retry policy", "IST0106"},
	{CodeFault, SeverityError, "validate", "invalid fault injection", "IST0106"},
	{CodeMirror, SeverityError, "validate", "invalid mirror policy", "IST0106"},
	{CodeCORS, SeverityError, "validate", "invalid CORS policy", "IST0106"},
	{CodeDelegate, SeverityError, "validate", "invalid delegate or delegate VirtualService", "IST0106"},
	{CodeResolution, SeverityError, "validate", "ServiceEntry resolution does not fit its endpoints or addresses", "IST0106"},
	{CodeAddress, SeverityError, "validate", "invalid IP address or CIDR block", "IST0106"},
	{CodeAuthzAction, SeverityError, "validate", "AuthorizationPolicy action, provider or rule structure invalid", "IST0106"},
	{CodeIdentity, SeverityError, "validate", "invalid principal, namespace, service account or trust domain", "IST0106"},
	{CodeCondition, SeverityError, "validate", "unknown condition key or invalid condition value", "IST0106"},
	{CodeJWT, SeverityError, "validate", "invalid JWT rule", "IST0106"},
	{CodeMTLS, SeverityError, "validate", "invalid mTLS settings", "IST0106"},
	{CodeServer, SeverityError, "validate", "invalid Gateway server", "IST0106"},
	{CodeMatch, SeverityError, "validate", "invalid match condition", "IST0106"},
	{CodeRouteConflict, SeverityError, "validate", "route combines actions that exclude each other", "IST0106"},
	{CodeRedirect, SeverityError, "validate", "invalid redirect, rewrite or direct response", "IST0106"},
	{CodeTrafficPolicy, SeverityError, "validate", "invalid traffic policy", "IST0106"},
	{CodeExportTo, SeverityError, "validate", "invalid exportTo", "IST0106"},
	{CodeSidecar, SeverityError, "validate", "invalid Sidecar listener", "IST0106"},
	{CodeWorkload, SeverityError, "validate", "invalid WorkloadEntry, endpoint or WorkloadGroup", "IST0106"},
	{CodeDuplicate, SeverityError, "validate", "duplicate name, port or host within an object", "IST0106"},
	{CodeDeprecated, SeverityWarning, "validate", "deprecated or ignored setting", "IST0133"},
	{CodeSurprising, SeverityWarning, "validate", "valid setting with a likely unintended effect", "IST0133"},

	{CodeDuplicateObject, SeverityError, "analyze", "same kind/namespace/name defined more than once", ""},
	{CodeUnknownSubset, SeverityError, "analyze", "route to a subset no DestinationRule defines", "IST0101"},
	{CodeUnknownHost, SeverityError, "analyze", "route to a host no registry or ServiceEntry knows", "IST0101"},
	{CodeUnverifiedHost, SeverityWarning, "analyze", "route to a cluster-local host that cannot be checked offline", "IST0101"},
	{CodeUnknownGateway, SeverityError, "analyze", "VirtualService bound to a Gateway that does not exist", "IST0101"},
	{CodeVSConflict, SeverityError, "analyze", "two mesh VirtualServices for the same host", "IST0109"},
	{CodeVSMerged, SeverityWarning, "analyze", "two VirtualServices for the same host on one Gateway are merged in undefined order", ""},
	{CodeDRConflict, SeverityError, "analyze", "two DestinationRules for the same host conflict", ""},
	{CodeDRMerged, SeverityInfo, "analyze", "two DestinationRules for the same host are merged", ""},
	{CodeShadowedRoute, SeverityWarning, "analyze", "route can never match: an earlier route catches all its traffic", "IST0130"},
	{CodeMTLSConflict, SeverityError, "analyze", "STRICT mTLS where a DestinationRule disables TLS", ""},
	{CodeSelectorNoMatch, SeverityWarning, "analyze", "selector matches no known workload", "IST0127"},
	{CodeUnknownDelegate, SeverityError, "analyze", "delegate VirtualService does not exist", "IST0101"},
	{CodeSubsetNoMatch, SeverityWarning, "analyze", "subset labels match no workload of the service", "IST0173"},
	{CodeHostNotOnGateway, SeverityWarning, "analyze", "VirtualService host not served by its Gateway", "IST0132"},
	{CodePortRequired, SeverityError, "analyze", "destination port required: the service has several ports", "IST0112"},
	{CodeProxylessAuthz, SeverityWarning, "analyze", "policy on a proxyless gRPC server uses what gRPC cannot enforce; it fails closed there", ""},
	{CodeAuthzOverlap, SeverityWarning, "analyze", "DENY rule overlaps (warning: shadows) an ALLOW rule on the same workloads", ""},
	{CodePrincipalFormat, SeverityWarning, "analyze", "principal is not trust-domain/ns/NS/sa/SA, so it matches no workload identity", ""},

	{CodeValidatorFailed, SeverityError, "serve", "an external validator failed; the change waits for it (a warning with failurePolicy ignore)", ""},
}

// Codes returns the documentation of every code, ordered by code.
func Codes() []CodeInfo {
	t := codeTable
	return t[:]
}

// LookupCode returns the documentation of c.
func LookupCode(c Code) (CodeInfo, bool) {
	for _, ci := range codeTable {
		if ci.Code == c {
			return ci, true
		}
	}
	return CodeInfo{}, false
}
