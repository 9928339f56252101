{{/* Names, labels and the small pieces every template shares. */}}

{{- define "tenx.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tenx.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<service>": the name of a service's Deployment, Service, ... ; dict root svc */}}
{{- define "tenx.svcName" -}}
{{- printf "%s-%s" (include "tenx.fullname" .root) .svc | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The headless Service of a component: its DNS name answers with the
addresses of its ready pods, which the other services' clients balance
over (tenx_common::grpc::balance) and look up again every
upstreams.<name>.resolve_interval_ms. dict root svc
*/}}
{{- define "tenx.podsName" -}}
{{- printf "%s-%s" (include "tenx.fullname" .root | trunc 58 | trimSuffix "-") (printf "%s-pods" .svc) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tenx.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "tenx.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tenx
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of every pod of one service: its servers and its migration Job (NetworkPolicy selects these); dict root svc */}}
{{- define "tenx.podLabels" -}}
app.kubernetes.io/name: {{ include "tenx.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .svc }}
{{- end -}}

{{/* Selector of a service's serving pods (Deployment, Service, PDB); dict root svc */}}
{{- define "tenx.selectorLabels" -}}
{{ include "tenx.podLabels" . }}
tenx.dev/role: server
{{- end -}}

{{- define "tenx.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tenx.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image of a service; dict root svc cfg */}}
{{- define "tenx.image" -}}
{{- $repo := .cfg.image.repository | default (printf "%s/%s-%s" .root.Values.image.registry .root.Values.image.repository .svc) -}}
{{- $tag := .cfg.image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{/* The port of a "host:port" listen address. */}}
{{- define "tenx.port" -}}
{{- $parts := splitList ":" (toString .) -}}
{{- $port := last $parts -}}
{{- if not (regexMatch "^[0-9]+$" $port) -}}
{{- fail (printf "listen address %q has no numeric port" .) -}}
{{- end -}}
{{- $port -}}
{{- end -}}

{{- define "tenx.grpcPort" -}}
{{- include "tenx.port" .cfg.config.server.listen -}}
{{- end -}}

{{- define "tenx.adminPort" -}}
{{- include "tenx.port" .cfg.config.server.admin_listen -}}
{{- end -}}

{{/* The HTTP API port of a service with config.http.listen (the gateway), else empty. */}}
{{- define "tenx.httpPort" -}}
{{- with dig "http" "listen" "" .cfg.config -}}
{{- include "tenx.port" . -}}
{{- end -}}
{{- end -}}

{{/*
The config as rendered for the service: values' config plus the OTLP
endpoint, and each empty `upstreams.<name>.url` filled in with this
release's <name> pods (`http://<fullname>-<name>-pods:<its gRPC port>`,
the headless Service whose name resolves to every ready pod);
refused when that service is not enabled here. A service that verifies
auth's tokens (`authn`: the gateway, billing, notification) must name
auth's issuer and audience, else it would reject every token, and follow
revocations under auth's Redis key prefix, else it would miss them.
dict root svc cfg
*/}}
{{- define "tenx.effectiveConfig" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
{{- $config := deepCopy .cfg.config -}}
{{- if $root.Values.otlp.endpoint -}}
{{- $telemetry := get $config "telemetry" | default dict -}}
{{- $_ := set $telemetry "otlp_endpoint" $root.Values.otlp.endpoint -}}
{{- $_ := set $config "telemetry" $telemetry -}}
{{- end -}}
{{- range $up, $client := get $config "upstreams" | default dict -}}
{{- if not $client.url -}}
{{- $target := index $root.Values.services $up | default dict -}}
{{- if not $target.enabled -}}
{{- fail (printf "services.%s.config.upstreams.%s.url is empty, which means this release's %s, but services.%s is not enabled: set the URL of the %s to call" $svc $up $up $up $up) -}}
{{- end -}}
{{- $url := printf "http://%s:%s" (include "tenx.podsName" (dict "root" $root "svc" $up)) (include "tenx.port" $target.config.server.listen) -}}
{{- $_ := set $client "url" $url -}}
{{- end -}}
{{- end -}}
{{- if and (eq $svc "gateway") (dig "billing" "enabled" false $root.Values.services) -}}
{{- $provider := dig "billing" "config" "provider" "timeout_ms" 0 $root.Values.services | int64 -}}
{{- $deadline := dig "limits" "payment_timeout_ms" 0 $config | int64 -}}
{{- if le $deadline $provider -}}
{{- fail (printf "services.gateway.config.limits.payment_timeout_ms (%d) must exceed services.billing.config.provider.timeout_ms (%d): every slow payment would end in 504 while the provider is still answering" $deadline $provider) -}}
{{- end -}}
{{- range $op := list "billing_payment_methods_add" "billing_subscriptions_create" "billing_subscriptions_change" "billing_invoices_pay" -}}
{{- $override := dig "routes" $op "timeout_ms" 0 $config | int64 -}}
{{- if and $override (le $override $provider) -}}
{{- fail (printf "services.gateway.config.routes.%s.timeout_ms (%d) must exceed services.billing.config.provider.timeout_ms (%d)" $op $override $provider) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- with get $config "authn" -}}
{{- $authn := . -}}
{{- $auth := index $root.Values.services "auth" | default dict -}}
{{- if $auth.enabled -}}
{{- range $key := list "issuer" "audience" -}}
{{- $want := dig "config" "tokens" $key "" $auth -}}
{{- if ne (toString (get $authn $key)) (toString $want) -}}
{{- fail (printf "services.%s.config.authn.%s (%v) differs from services.auth.config.tokens.%s (%v): %s would reject every token" $svc $key (get $authn $key) $key $want $svc) -}}
{{- end -}}
{{- end -}}
{{- if hasKey $authn "revocation_prefix" -}}
{{- $want := dig "config" "redis" "key_prefix" "" $auth -}}
{{- if ne (toString $authn.revocation_prefix) (toString $want) -}}
{{- fail (printf "services.%s.config.authn.revocation_prefix (%v) differs from services.auth.config.redis.key_prefix (%v): %s would miss auth's revocations" $svc $authn.revocation_prefix $want $svc) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $config -}}
{{- end -}}

{{/*
One TOML value. Helm reads every number as a float, and `toToml` prints
10000 as 10000.0 (which the services' integer keys refuse), so this writes
whole numbers as integers, strings JSON-escaped (valid TOML basic strings),
lists inline and maps as inline tables.
*/}}
{{- define "tenx.tomlValue" -}}
{{- $v := . -}}
{{- $k := kindOf $v -}}
{{- if eq $k "string" -}}
{{- toJson $v | replace "\\u003c" "<" | replace "\\u003e" ">" | replace "\\u0026" "&" -}}
{{- else if eq $k "bool" -}}
{{- ternary "true" "false" $v -}}
{{- else if or (eq $k "float64") (eq $k "float32") -}}
{{- if eq (float64 (int64 $v)) (float64 $v) -}}{{- int64 $v -}}{{- else -}}{{- $v -}}{{- end -}}
{{- else if or (eq $k "int") (eq $k "int64") (eq $k "int32") -}}
{{- $v -}}
{{- else if eq $k "slice" -}}
[{{- range $i, $e := $v -}}{{- if $i }}, {{ end -}}{{- include "tenx.tomlValue" $e -}}{{- end -}}]
{{- else if eq $k "map" -}}
{ {{- range $i, $key := keys $v | sortAlpha -}}{{- if $i }},{{ end }} {{ $key }} = {{ include "tenx.tomlValue" (get $v $key) -}}{{- end }} }
{{- else -}}
{{- fail (printf "config value %v of kind %s cannot be written as TOML" $v $k) -}}
{{- end -}}
{{- end -}}

{{/* A config map (sections of keys) as a TOML document. */}}
{{- define "tenx.toml" -}}
{{- $config := . -}}
{{- range $section := keys $config | sortAlpha }}
{{- $keys := get $config $section }}
{{- if ne (kindOf $keys) "map" }}
{{- fail (printf "config.%s must be a section (a map of keys)" $section) }}
{{- end }}
{{- include "tenx.tomlTable" (dict "name" $section "table" $keys) }}
{{- end -}}
{{- end -}}

{{/* One TOML table: [name], its keys, then its sub-tables as [name.key] (e.g. [upstreams.auth]); dict name table */}}
{{- define "tenx.tomlTable" -}}
{{- $name := .name -}}
{{- $table := .table }}
[{{ $name }}]
{{- range $key := keys $table | sortAlpha }}
{{- if ne (kindOf (get $table $key)) "map" }}
{{ $key }} = {{ include "tenx.tomlValue" (get $table $key) }}
{{- end }}
{{- end }}
{{ range $key := keys $table | sortAlpha }}
{{- if eq (kindOf (get $table $key)) "map" }}
{{- include "tenx.tomlTable" (dict "name" (printf "%s.%s" $name $key) "table" (get $table $key)) }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Secret keys (dotted) of a service's own Secret, sorted: its values
`secrets`, less those it reads from another service's Secret here
(tenx.foreignSecrets). dict root svc cfg
*/}}
{{- define "tenx.secretKeys" -}}
{{- $foreign := list -}}
{{- range $f := include "tenx.foreignSecrets" . | fromJsonArray -}}
{{- $foreign = append $foreign $f.key -}}
{{- end -}}
{{- $out := list -}}
{{- range $section, $keys := .cfg.secrets -}}
{{- if eq (kindOf $keys) "map" -}}
{{- range $key, $_ := $keys -}}
{{- $dotted := printf "%s.%s" $section $key -}}
{{- if not (has $dotted $foreign) -}}
{{- $out = append $out $dotted -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson (sortAlpha $out) -}}
{{- end -}}

{{- define "tenx.secretName" -}}
{{- .cfg.secrets.existingSecret | default (include "tenx.svcName" .) -}}
{{- end -}}

{{/* Keys a service can run without: their variable is optional. */}}
{{- define "tenx.optionalSecretKeys" -}}
["database.replica_url", "database.migrate_url", "provider.stripe_secret_key", "provider.stripe_webhook_secret"]
{{- end -}}

{{/*
The service clients auth knows (its service_clients.<name>), when .svc is
auth: every other enabled service that calls as itself (has an `authn`
section), sorted; else empty. Auth reads each one's client secret from
that service's own Secret (key authn.client_secret), so the value lives in
one place. dict root svc
*/}}
{{- define "tenx.serviceClients" -}}
{{- $out := list -}}
{{- if eq .svc "auth" -}}
{{- range $name, $cfg := .root.Values.services -}}
{{- if and $cfg.enabled (ne $name "auth") (hasKey ($cfg.config | default dict) "authn") -}}
{{- $out = append $out $name -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson (sortAlpha $out) -}}
{{- end -}}

{{/*
Secret keys one service reads from another's Secret instead of holding a
copy (the reverse of auth's service clients): service → its key → [the
service whose Secret holds it, its key there]. notification opens the codes
auth seals with auth's codes.seal_key. Only while that service is enabled
in the release; without it the key is the reader's own (its values
`secrets`, or its existingSecret), and required.
*/}}
{{- define "tenx.sharedSecretKeys" -}}
{"notification": {"codes.seal_key": ["auth", "codes.seal_key"]}}
{{- end -}}

{{/* The keys of tenx.sharedSecretKeys the service reads, whether or not their owner is here, sorted; dict svc */}}
{{- define "tenx.sharedKeysOf" -}}
{{- toJson (keys (get (include "tenx.sharedSecretKeys" . | fromJson) .svc | default dict) | sortAlpha) -}}
{{- end -}}

{{/*
What a service reads from other services' Secrets in this release: a list
of {key, owner, ownerKey}. auth: each service client's
authn.client_secret as service_clients.<name>; notification: auth's
codes.seal_key, while auth is enabled (a value in notification's own
values is then refused: it would be ignored). dict root svc cfg
*/}}
{{- define "tenx.foreignSecrets" -}}
{{- $ctx := . -}}
{{- $out := list -}}
{{- range $client := include "tenx.serviceClients" . | fromJsonArray -}}
{{- $out = append $out (dict "key" (printf "service_clients.%s" $client) "owner" $client "ownerKey" "authn.client_secret") -}}
{{- end -}}
{{- $shared := get (include "tenx.sharedSecretKeys" . | fromJson) .svc | default dict -}}
{{- range $key := keys $shared | sortAlpha -}}
{{- $src := get $shared $key -}}
{{- $owner := index $src 0 -}}
{{- if (index $ctx.root.Values.services $owner | default dict).enabled -}}
{{- $parts := splitList "." $key -}}
{{- if dig (first $parts) (last $parts) "" ($ctx.cfg.secrets | default dict) -}}
{{- fail (printf "services.%s.secrets.%s is set, but %s is in this release: %s reads %s's %s from %s's Secret, so the value lives in one place. Leave it empty (set services.%s.secrets.%s, or put it in %s's existingSecret)" $ctx.svc $key $owner $ctx.svc $owner (index $src 1) $owner $owner (index $src 1) $owner) -}}
{{- end -}}
{{- $out = append $out (dict "key" $key "owner" $owner "ownerKey" (index $src 1)) -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* Environment of a service container: its secrets as TENX_<SVC>__<SECTION>__<KEY> from its own Secret, then those it reads from other services' Secrets (tenx.foreignSecrets); dict root svc cfg */}}
{{- define "tenx.secretEnv" -}}
{{- $ctx := . -}}
{{- $optional := include "tenx.optionalSecretKeys" . | fromJsonArray -}}
{{- range $key := include "tenx.secretKeys" . | fromJsonArray }}
- name: {{ printf "TENX_%s__%s" ($ctx.svc | upper) ($key | replace "." "__" | upper) }}
  valueFrom:
    secretKeyRef:
      name: {{ include "tenx.secretName" $ctx }}
      key: {{ $key }}
      {{- if has $key $optional }}
      optional: true
      {{- end }}
{{- end }}
{{- range $f := include "tenx.foreignSecrets" . | fromJsonArray }}
- name: {{ printf "TENX_%s__%s" ($ctx.svc | upper) ($f.key | replace "." "__" | upper) }}
  valueFrom:
    secretKeyRef:
      name: {{ include "tenx.secretName" (dict "root" $ctx.root "svc" $f.owner "cfg" (index $ctx.root.Values.services $f.owner)) }}
      key: {{ $f.ownerKey }}
{{- end }}
{{- end -}}

{{/* Checksum of what a pod reads at start, so a change rolls the pods: its config, its secrets, and where (and, from values, what) it reads from other services' Secrets (auth: its service clients' secrets; notification: auth's seal key). */}}
{{- define "tenx.configChecksum" -}}
{{- $foreign := dict -}}
{{- range $f := include "tenx.foreignSecrets" . | fromJsonArray -}}
{{- $secrets := (index $.root.Values.services $f.owner).secrets -}}
{{- $parts := splitList "." $f.ownerKey -}}
{{- $_ := set $foreign $f.key (list $f.owner $secrets.existingSecret (dig (first $parts) (last $parts) "" $secrets)) -}}
{{- end -}}
{{- printf "%s|%s|%s" (include "tenx.effectiveConfig" .) (toJson .cfg.secrets) (toJson $foreign) | sha256sum -}}
{{- end -}}

{{/*
Behind an Ingress or a Gateway API route the public service sees the
proxy's address; with http.forwarded_hops 0 every client would share one
rate limit (anonymous routes: per IP). Fails the render then. The routes
call it once they know the public service; dict root svc cfg via (the
values that route: "ingress", "httpRoute")
*/}}
{{- define "tenx.checkForwardedHops" -}}
{{- $http := dig "http" dict .cfg.config -}}
{{- if and (hasKey $http "forwarded_hops") (eq (int $http.forwarded_hops) 0) -}}
{{- fail (printf "%s sends clients to %s through a proxy, but services.%s.config.http.forwarded_hops is 0: every client would have the proxy's address and share one rate limit. Set services.%s.config.http.forwarded_hops to the number of proxies that append to X-Forwarded-For (usually 1)" .via .svc .svc .svc) -}}
{{- end -}}
{{- end -}}

{{/* The pod-level pieces shared by the Deployment and the migration Job; dict root svc cfg */}}
{{- define "tenx.podCommon" -}}
serviceAccountName: {{ include "tenx.serviceAccountName" .root }}
automountServiceAccountToken: false
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{- define "tenx.configVolume" -}}
- name: config
  configMap:
    name: {{ include "tenx.svcName" . }}
{{- end -}}
