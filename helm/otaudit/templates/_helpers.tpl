{{/*
Names, labels, the collector's configuration and the checks every render makes.
Each template here takes the chart's context (the root ".", or ".Subcharts.otaudit"
from a chart that depends on this one).
*/}}

{{- define "otaudit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "otaudit.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "otaudit.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "otaudit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "otaudit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "otaudit.labels" -}}
helm.sh/chart: {{ include "otaudit.chart" . }}
{{ include "otaudit.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ ternary "sidecar" "collector" (eq .Values.mode "sidecar") }}
app.kubernetes.io/part-of: otaudit
{{- end }}

{{- define "otaudit.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "otaudit.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "otaudit.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "otaudit.configMapName" -}}
{{- printf "%s-config" (include "otaudit.fullname" .) }}
{{- end }}

{{- define "otaudit.catalogsConfigMapName" -}}
{{- default (printf "%s-catalogs" (include "otaudit.fullname" .)) .Values.catalogs.configMap }}
{{- end }}

{{/* Paths inside the container. */}}
{{- define "otaudit.configPath" -}}/etc/otaudit/otaudit.yaml{{- end }}
{{- define "otaudit.catalogsPath" -}}/etc/otaudit/catalogs{{- end }}
{{- define "otaudit.dataPath" -}}/var/lib/otaudit{{- end }}

{{/* The Secret holding the database URL and the token pepper: existing, or made by the chart ("" when none). */}}
{{- define "otaudit.secretName" -}}
{{- if .Values.existingSecret.name }}
{{- .Values.existingSecret.name }}
{{- else if or .Values.database.url .Values.database.readUrl .Values.auth.tokenPepper .Values.integrity.signingKey }}
{{- include "otaudit.fullname" . }}
{{- end }}
{{- end }}

{{/* "true" when the collector gets its database URL from the Secret. */}}
{{- define "otaudit.hasDatabaseUrl" -}}
{{- if .Values.existingSecret.name }}
{{- if .Values.existingSecret.databaseUrlKey }}true{{ end }}
{{- else if .Values.database.url }}true{{ end }}
{{- end }}

{{/* "true" when the collector gets a read replica's URL from the Secret. */}}
{{- define "otaudit.hasReadUrl" -}}
{{- if .Values.existingSecret.name }}
{{- if .Values.existingSecret.databaseReadUrlKey }}true{{ end }}
{{- else if .Values.database.readUrl }}true{{ end }}
{{- end }}

{{/* "true" when the collector gets its token pepper from the Secret. */}}
{{- define "otaudit.hasTokenPepper" -}}
{{- if .Values.existingSecret.name }}
{{- if .Values.existingSecret.tokenPepperKey }}true{{ end }}
{{- else if .Values.auth.tokenPepper }}true{{ end }}
{{- end }}

{{/* "true" when the collector gets the log's signing key from the Secret. */}}
{{- define "otaudit.hasSigningKey" -}}
{{- if .Values.existingSecret.name }}
{{- if .Values.existingSecret.signingKeyKey }}true{{ end }}
{{- else if .Values.integrity.signingKey }}true{{ end }}
{{- end }}

{{/* "true" when the collector runs the embedded PostgreSQL (a sidecar that asked for it). */}}
{{- define "otaudit.embedded" -}}
{{- if and (eq .Values.mode "sidecar") .Values.database.embedded }}true{{ end }}
{{- end }}

{{/* "true" when custom catalogs are mounted at /etc/otaudit/catalogs. */}}
{{- define "otaudit.hasCatalogs" -}}
{{- if or .Values.catalogs.configMap .Values.catalogs.files .Values.catalogs.volume }}true{{ end }}
{{- end }}

{{- define "otaudit.isLoopback" -}}
{{- if or (hasPrefix "127." .) (eq . "::1") (eq . "localhost") }}true{{ end }}
{{- end }}

{{/*
The collector's configuration: .Values.config with the chart's settings added where the
values do not set them (a key the values set always wins). Rendered as YAML.
*/}}
{{- define "otaudit.config" -}}
{{- $config := deepCopy .Values.config }}
{{- $sidecar := eq .Values.mode "sidecar" }}
{{- $listen := get $config "listen" | default (dict) }}
{{- $defaults := dict "host" "0.0.0.0" "grpc_port" 4317 "http_port" 4318 "api_host" "0.0.0.0" "api_port" 4319 }}
{{- if $sidecar }}
{{- $_ := set $defaults "host" "127.0.0.1" }}
{{- $_ := set $defaults "api_host" (ternary "0.0.0.0" "127.0.0.1" (eq .Values.sidecar.probes "httpGet")) }}
{{- end }}
{{- range $key, $value := $defaults }}
{{- if not (hasKey $listen $key) }}
{{- $_ := set $listen $key $value }}
{{- end }}
{{- end }}
{{- if not (hasKey $listen "workers") }}
{{- $_ := set $listen "workers" (.Values.workers | int) }}
{{- end }}
{{- $_ := set $config "listen" $listen }}
{{- if include "otaudit.embedded" . }}
{{- $database := get $config "database" | default (dict) }}
{{- if not (hasKey $database "data_dir") }}
{{- $_ := set $database "data_dir" (printf "%s/data" (include "otaudit.dataPath" .)) }}
{{- end }}
{{- $_ := set $config "database" $database }}
{{- end }}
{{- if include "otaudit.hasCatalogs" . }}
{{- $catalogs := get $config "catalogs" | default (dict) }}
{{- $dirs := get $catalogs "dirs" | default (list) }}
{{- $_ := set $catalogs "dirs" (append $dirs (include "otaudit.catalogsPath" .) | uniq) }}
{{- $_ := set $config "catalogs" $catalogs }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* shutdown.grace_seconds of the rendered configuration (the collector's default: 25). */}}
{{- define "otaudit.graceSeconds" -}}
{{- $config := include "otaudit.config" . | fromYaml }}
{{- dig "shutdown" "grace_seconds" 25 $config }}
{{- end }}

{{/* Seconds the container sleeps in preStop before the collector gets SIGTERM (none for a native sidecar). */}}
{{- define "otaudit.preStopSleepSeconds" -}}
{{- if and (eq .Values.mode "sidecar") .Values.sidecar.native }}0{{ else }}{{ .Values.preStopSleepSeconds | int }}{{ end }}
{{- end }}

{{/* The pod's terminationGracePeriodSeconds: the preStop sleep and the collector's drain must fit in it. */}}
{{- define "otaudit.terminationGracePeriodSeconds" -}}
{{- $grace := include "otaudit.graceSeconds" . | float64 }}
{{- $needed := addf (include "otaudit.preStopSleepSeconds" . | float64) $grace }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add (ceil $needed | int) 5 }}
{{- else if le (.Values.terminationGracePeriodSeconds | float64) $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be larger than the preStop sleep (%s) plus config.shutdown.grace_seconds (%v): Kubernetes would kill the collector in the middle of its drain" .Values.terminationGracePeriodSeconds (include "otaudit.preStopSleepSeconds" .) $grace) }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds | int }}
{{- end }}
{{- end }}

{{/* Refuse values that cannot work, with what to do instead. Renders nothing. */}}
{{- define "otaudit.validate" -}}
{{- $hasUrl := include "otaudit.hasDatabaseUrl" . }}
{{- if and .Values.existingSecret.name (or .Values.database.url .Values.auth.tokenPepper) }}
{{- fail "existingSecret.name is set: put the database URL and the token pepper in that Secret, not in database.url or auth.tokenPepper" }}
{{- end }}
{{- if eq .Values.mode "deployment" }}
{{- if .Values.database.embedded }}
{{- fail "database.embedded is for mode: sidecar only; a shared deployment needs an external PostgreSQL (database.url or existingSecret.name)" }}
{{- end }}
{{- if not $hasUrl }}
{{- fail "mode: deployment needs an external PostgreSQL: set database.url (the chart makes a Secret) or existingSecret.name (a Secret with the key existingSecret.databaseUrlKey); without one the collector would start an embedded PostgreSQL in each pod" }}
{{- end }}
{{- if not (include "otaudit.hasTokenPepper" .) }}
{{- fail "mode: deployment needs a token pepper (the secret key of the token hashes, shared by every replica): set auth.tokenPepper (16+ characters) or existingSecret.name with the key existingSecret.tokenPepperKey" }}
{{- end }}
{{- else }}
{{- if and $hasUrl .Values.database.embedded }}
{{- fail "database.embedded is true but a database URL is configured too (database.url or existingSecret): choose one" }}
{{- end }}
{{- if not (or $hasUrl .Values.database.embedded) }}
{{- fail "mode: sidecar needs a database: set database.url or existingSecret.name for an external PostgreSQL, or database.embedded: true for a PostgreSQL inside the pod (its data is lost with the pod unless database.dataVolume is persistent)" }}
{{- end }}
{{- $listen := include "otaudit.config" . | fromYaml | dig "listen" (dict) }}
{{- if and (eq .Values.sidecar.probes "httpGet") (include "otaudit.isLoopback" (toString $listen.api_host)) }}
{{- fail (printf "sidecar.probes is httpGet but config.listen.api_host is %s: the kubelet's probes connect to the pod's IP and would never reach it; use sidecar.probes: exec to keep the API on the loopback" $listen.api_host) }}
{{- end }}
{{- end }}
{{- $sources := 0 }}
{{- range $source := list .Values.catalogs.configMap .Values.catalogs.files .Values.catalogs.volume }}
{{- if $source }}{{ $sources = add1 $sources }}{{ end }}
{{- end }}
{{- if gt $sources 1 }}
{{- fail "catalogs: set only one of catalogs.configMap, catalogs.files and catalogs.volume" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable)) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both (set the other to null)" }}
{{- end }}
{{- $_ := include "otaudit.terminationGracePeriodSeconds" . }}
{{- end }}

{{/* The ConfigMap with otaudit.yaml; its sha256 is the pods' checksum/config annotation. */}}
{{- define "otaudit.configMap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "otaudit.configMapName" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "otaudit.labels" . | nindent 4 }}
data:
  otaudit.yaml: |
    # otaudit collector configuration, rendered by the otaudit chart: values.config merged
    # over the chart's settings. Defaults for every other key: config/otaudit.yaml.
    {{- include "otaudit.config" . | nindent 4 }}
{{- end }}

{{/* The Secret the chart makes from database.url and auth.tokenPepper. */}}
{{- define "otaudit.secret" -}}
apiVersion: v1
kind: Secret
metadata:
  name: {{ include "otaudit.fullname" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "otaudit.labels" . | nindent 4 }}
type: Opaque
data:
  {{- with .Values.database.url }}
  database-url: {{ . | b64enc | quote }}
  {{- end }}
  {{- with .Values.database.readUrl }}
  database-read-url: {{ . | b64enc | quote }}
  {{- end }}
  {{- with .Values.auth.tokenPepper }}
  token-pepper: {{ . | b64enc | quote }}
  {{- end }}
  {{- with .Values.integrity.signingKey }}
  signing-key: {{ . | b64enc | quote }}
  {{- end }}
{{- end }}

{{/* Pod template annotations: checksums that roll the pods when the configuration or the chart-made Secret changes. */}}
{{- define "otaudit.podAnnotations" -}}
checksum/config: {{ include "otaudit.configMap" . | sha256sum }}
{{- if and (not .Values.existingSecret.name) (include "otaudit.secretName" .) }}
checksum/secret: {{ include "otaudit.secret" . | sha256sum }}
{{- end }}
{{- /* Not on a sidecar: the pod is the service's, and its own metrics may own these annotations. */}}
{{- if and .Values.metrics.scrapeAnnotations (eq .Values.mode "deployment") }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ include "otaudit.config" . | fromYaml | dig "listen" "api_port" 4319 | int | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* The collector's container; in mode sidecar, the sidecar (see _sidecar.tpl). */}}
{{- define "otaudit.container" -}}
{{- include "otaudit.validate" . }}
{{- $sidecar := eq .Values.mode "sidecar" }}
{{- $native := and $sidecar .Values.sidecar.native }}
{{- $exec := and $sidecar (eq .Values.sidecar.probes "exec") }}
{{- $listen := include "otaudit.config" . | fromYaml | dig "listen" (dict) }}
{{- $apiPort := $listen.api_port | int }}
{{- $secret := include "otaudit.secretName" . -}}
- name: {{ ternary .Values.sidecar.containerName "otaudit" $sidecar }}
  image: {{ include "otaudit.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if $native }}
  restartPolicy: Always
  {{- end }}
  args:
    - serve
    - --config
    - {{ include "otaudit.configPath" . }}
  {{- if $sidecar }}
  {{- if not $exec }}
  ports:
    - name: otaudit-api
      containerPort: {{ $apiPort }}
      protocol: TCP
  {{- end }}
  {{- else }}
  ports:
    - name: otlp
      containerPort: {{ $listen.grpc_port | int }}
      protocol: TCP
    - name: otlp-http
      containerPort: {{ $listen.http_port | int }}
      protocol: TCP
    - name: api
      containerPort: {{ $apiPort }}
      protocol: TCP
  {{- end }}
  env:
    # So that `kubectl exec ... -- otaudit token create ...` uses the same configuration.
    - name: OTAUDIT_CONFIG
      value: {{ include "otaudit.configPath" . }}
    {{- if include "otaudit.hasDatabaseUrl" . }}
    - name: OTAUDIT_DATABASE_URL
      valueFrom:
        secretKeyRef:
          name: {{ $secret }}
          key: {{ ternary .Values.existingSecret.databaseUrlKey "database-url" (ne .Values.existingSecret.name "") }}
    {{- end }}
    {{- if include "otaudit.hasReadUrl" . }}
    - name: OTAUDIT_DATABASE_READ_URL
      valueFrom:
        secretKeyRef:
          name: {{ $secret }}
          key: {{ ternary .Values.existingSecret.databaseReadUrlKey "database-read-url" (ne .Values.existingSecret.name "") }}
    {{- end }}
    {{- if include "otaudit.hasTokenPepper" . }}
    - name: OTAUDIT_TOKEN_PEPPER
      valueFrom:
        secretKeyRef:
          name: {{ $secret }}
          key: {{ ternary .Values.existingSecret.tokenPepperKey "token-pepper" (ne .Values.existingSecret.name "") }}
    {{- end }}
    {{- if include "otaudit.hasSigningKey" . }}
    - name: OTAUDIT_SIGNING_KEY
      valueFrom:
        secretKeyRef:
          name: {{ $secret }}
          key: {{ ternary .Values.existingSecret.signingKeyKey "signing-key" (ne .Values.existingSecret.name "") }}
    {{- end }}
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- $probes := dict "startupProbe" "healthz" "livenessProbe" "healthz" "readinessProbe" "readyz" }}
  {{- range $probe := list "startupProbe" "livenessProbe" "readinessProbe" }}
  {{- $settings := get $.Values $probe }}
  {{- if $settings.enabled }}
  {{ $probe }}:
    {{- if $exec }}
    exec:
      # The API listens on the loopback only: ask it from inside the container.
      command:
        - python
        - -c
        - {{ printf "import urllib.request; urllib.request.urlopen('http://127.0.0.1:%d/%s', timeout=%d)" $apiPort (get $probes $probe) ($settings.timeoutSeconds | int) | quote }}
    {{- else }}
    httpGet:
      path: /{{ get $probes $probe }}
      port: {{ ternary "otaudit-api" "api" $sidecar }}
    {{- end }}
    periodSeconds: {{ $settings.periodSeconds }}
    timeoutSeconds: {{ $settings.timeoutSeconds }}
    failureThreshold: {{ $settings.failureThreshold }}
  {{- end }}
  {{- end }}
  {{- if gt (include "otaudit.preStopSleepSeconds" . | int) 0 }}
  lifecycle:
    preStop:
      # Keep serving while the endpoints (or, in a sidecar, the app's last flush) catch up.
      exec:
        command: ["sleep", "{{ include "otaudit.preStopSleepSeconds" . }}"]
  {{- end }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: otaudit-config
      mountPath: {{ include "otaudit.configPath" . }}
      subPath: otaudit.yaml
      readOnly: true
    {{- if include "otaudit.hasCatalogs" . }}
    - name: otaudit-catalogs
      mountPath: {{ include "otaudit.catalogsPath" . }}
      readOnly: true
    {{- end }}
    - name: otaudit-tmp
      mountPath: /tmp
    {{- if include "otaudit.embedded" . }}
    - name: otaudit-data
      mountPath: {{ include "otaudit.dataPath" . }}
    {{- end }}
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* The volumes the container mounts (a list). */}}
{{- define "otaudit.volumes" -}}
- name: otaudit-config
  configMap:
    name: {{ include "otaudit.configMapName" . }}
{{- if include "otaudit.hasCatalogs" . }}
- name: otaudit-catalogs
  {{- if .Values.catalogs.volume }}
  {{- toYaml .Values.catalogs.volume | nindent 2 }}
  {{- else }}
  configMap:
    name: {{ include "otaudit.catalogsConfigMapName" . }}
  {{- end }}
{{- end }}
- name: otaudit-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if include "otaudit.embedded" . }}
- name: otaudit-data
  {{- if .Values.database.dataVolume }}
  {{- toYaml .Values.database.dataVolume | nindent 2 }}
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}
