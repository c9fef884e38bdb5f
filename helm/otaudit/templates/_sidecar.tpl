{{/*
The sidecar, as named templates for a service team's own chart. Add this chart as a
dependency with mode: sidecar (it renders the ConfigMap and the Secret itself), then in
the pod template of your Deployment:

  metadata:
    annotations:
      {{- include "otaudit.sidecar.annotations" .Subcharts.otaudit | nindent 8 }}
  spec:
    terminationGracePeriodSeconds: {{ include "otaudit.sidecar.terminationGracePeriodSeconds" .Subcharts.otaudit }}
    initContainers:          # sidecar.native: true (Kubernetes 1.29+)
      {{- include "otaudit.sidecar.container" .Subcharts.otaudit | nindent 8 }}
    containers:              # or here, next to your app, when sidecar.native is false
      - name: app
        ...
    volumes:
      {{- include "otaudit.sidecar.volumes" .Subcharts.otaudit | nindent 8 }}

Each takes the otaudit chart's context: ".Subcharts.otaudit" from the parent chart, "."
inside this chart. templates/sidecar-example.yaml uses them.
*/}}

{{/* The otaudit container (a list item). With sidecar.native it carries restartPolicy: Always: put it under initContainers. */}}
{{- define "otaudit.sidecar.container" -}}
{{- if ne .Values.mode "sidecar" }}
{{- fail "otaudit.sidecar.container: set mode: sidecar in the otaudit values" }}
{{- end }}
{{- include "otaudit.container" . }}
{{- end }}

{{/* The volumes the sidecar mounts (list items), named otaudit-* so they do not clash with the app's. */}}
{{- define "otaudit.sidecar.volumes" -}}
{{- include "otaudit.volumes" . }}
{{- end }}

{{/* Pod template annotations: roll the pods when the collector's configuration changes. */}}
{{- define "otaudit.sidecar.annotations" -}}
{{- include "otaudit.podAnnotations" . }}
{{- end }}

{{/* The smallest terminationGracePeriodSeconds that fits the collector's drain; add your app's own drain for a native sidecar (stopped after the app). */}}
{{- define "otaudit.sidecar.terminationGracePeriodSeconds" -}}
{{- include "otaudit.terminationGracePeriodSeconds" . }}
{{- end }}
