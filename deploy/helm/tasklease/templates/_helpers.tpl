{{/* Names, labels and the pieces every tasklease pod shares. */}}

{{- define "tasklease.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tasklease.fullname" -}}
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

{{- define "tasklease.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels; call with (dict "ctx" $ "component" "worker"). */}}
{{- define "tasklease.labels" -}}
helm.sh/chart: {{ include "tasklease.chart" .ctx }}
{{ include "tasklease.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: tasklease
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tasklease.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tasklease.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tasklease.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tasklease.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tasklease.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "tasklease.etcdName" -}}
{{- printf "%s-etcd" (include "tasklease.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tasklease.webTokenSecret" -}}
{{- default (printf "%s-web-token" (include "tasklease.fullname" .)) .Values.web.token.existingSecret }}
{{- end }}

{{/*
The etcd endpoints tasklease connects to: the bundled etcd's members, or
etcd.endpoints (a string or a list). Fails with a clear message when neither.
*/}}
{{- define "tasklease.etcdEndpoints" -}}
{{- $e := .Values.etcd }}
{{- if $e.bundled.enabled }}
{{- if $e.endpoints }}
{{- fail "etcd.endpoints and etcd.bundled.enabled are exclusive: give an external etcd's endpoints, or enable the bundled etcd, not both" }}
{{- end }}
{{- $name := include "tasklease.etcdName" . }}
{{- $urls := list }}
{{- range $i := until (int $e.bundled.replicas) }}
{{- $urls = append $urls (printf "http://%s-%d.%s-headless.%s.svc.%s:2379" $name $i $name $.Release.Namespace $.Values.clusterDomain) }}
{{- end }}
{{- join "," $urls }}
{{- else }}
{{- $endpoints := $e.endpoints }}
{{- if kindIs "slice" $endpoints }}
{{- $endpoints = join "," $endpoints }}
{{- end }}
{{- if not $endpoints }}
{{- fail "etcd.endpoints is required: set it to your etcd's client URLs (--set etcd.endpoints=http://etcd:2379), or set etcd.bundled.enabled=true for a trial etcd inside the release" }}
{{- end }}
{{- $endpoints }}
{{- end }}
{{- end }}

{{/* The environment every tasklease container gets: no secret values, only file paths and references. */}}
{{- define "tasklease.env" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: TASKLEASE_ETCD
  value: {{ include "tasklease.etcdEndpoints" . | quote }}
- name: TASKLEASE_NAMESPACE
  value: {{ .Values.tasklease.namespace | quote }}
- name: TASKLEASE_LOG_LEVEL
  value: {{ .Values.tasklease.logLevel | quote }}
{{- if not (kindIs "invalid" .Values.tasklease.etcdTimeout) }}
- name: TASKLEASE_ETCD_TIMEOUT
  value: {{ .Values.tasklease.etcdTimeout | quote }}
{{- end }}
{{- if not .Values.etcd.bundled.enabled }}
{{- with .Values.etcd.auth }}
{{- if .user }}
- name: TASKLEASE_ETCD_USER
  value: {{ .user | quote }}
{{- end }}
{{- if .existingSecret }}
- name: TASKLEASE_ETCD_PASSWORD_FILE
  value: /etc/tasklease/etcd-auth/password
{{- end }}
{{- end }}
{{- with .Values.etcd.tls }}
{{- if .existingSecret }}
{{- if .caKey }}
- name: TASKLEASE_ETCD_CA
  value: /etc/tasklease/etcd-tls/ca.crt
{{- end }}
{{- if .certKey }}
- name: TASKLEASE_ETCD_CERT
  value: /etc/tasklease/etcd-tls/tls.crt
{{- end }}
{{- if .keyKey }}
- name: TASKLEASE_ETCD_KEY
  value: /etc/tasklease/etcd-tls/tls.key
{{- end }}
{{- end }}
{{- if .serverName }}
- name: TASKLEASE_ETCD_TLS_SERVER_NAME
  value: {{ .serverName | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Volumes for /tmp and the etcd credentials (Secrets, mounted as files). */}}
{{- define "tasklease.volumes" -}}
- name: tmp
  emptyDir: {}
{{- if not .Values.etcd.bundled.enabled }}
{{- with .Values.etcd.tls }}
{{- if .existingSecret }}
- name: etcd-tls
  secret:
    secretName: {{ .existingSecret | quote }}
    defaultMode: 0440
    items:
      {{- if .caKey }}
      - key: {{ .caKey | quote }}
        path: ca.crt
      {{- end }}
      {{- if .certKey }}
      - key: {{ .certKey | quote }}
        path: tls.crt
      {{- end }}
      {{- if .keyKey }}
      - key: {{ .keyKey | quote }}
        path: tls.key
      {{- end }}
{{- end }}
{{- end }}
{{- if .Values.etcd.auth.existingSecret }}
- name: etcd-auth
  secret:
    secretName: {{ .Values.etcd.auth.existingSecret | quote }}
    defaultMode: 0440
    items:
      - key: {{ .Values.etcd.auth.passwordKey | quote }}
        path: password
{{- end }}
{{- end }}
{{- end }}

{{- define "tasklease.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if not .Values.etcd.bundled.enabled }}
{{- if .Values.etcd.tls.existingSecret }}
- name: etcd-tls
  mountPath: /etc/tasklease/etcd-tls
  readOnly: true
{{- end }}
{{- if .Values.etcd.auth.existingSecret }}
- name: etcd-auth
  mountPath: /etc/tasklease/etcd-auth
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{/* Checks across values that the schema cannot express. */}}
{{- define "tasklease.validate" -}}
{{- $_ := include "tasklease.etcdEndpoints" . }}
{{- if and (not .Values.etcd.bundled.enabled) .Values.etcd.auth.existingSecret (not .Values.etcd.auth.user) }}
{{- fail "etcd.auth.existingSecret is set but etcd.auth.user is empty: give the etcd user the password belongs to" }}
{{- end }}
{{- if and .Values.etcd.tls.existingSecret (not .Values.etcd.tls.caKey) (not .Values.etcd.tls.certKey) }}
{{- fail "etcd.tls.existingSecret is set but names no key: set etcd.tls.caKey and/or etcd.tls.certKey/keyKey" }}
{{- end }}
{{- if ne (empty .Values.etcd.tls.certKey) (empty .Values.etcd.tls.keyKey) }}
{{- fail "etcd.tls.certKey and etcd.tls.keyKey go together: give both (a client certificate) or neither" }}
{{- end }}
{{- $tgp := .Values.worker.terminationGracePeriodSeconds }}
{{- if and (not (kindIs "invalid" $tgp)) (lt (float64 $tgp) (float64 .Values.worker.grace)) }}
{{- fail (printf "worker.terminationGracePeriodSeconds (%v) is below worker.grace (%v): Kubernetes would kill the workers before their running tasks drain; leave it null (grace + terminationGraceMargin) or raise it" $tgp .Values.worker.grace) }}
{{- end }}
{{- end }}

{{- define "tasklease.workerTerminationGrace" -}}
{{- $tgp := .Values.worker.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $tgp }}
{{- add (ceil .Values.worker.grace | int) (int .Values.worker.terminationGraceMargin) }}
{{- else }}
{{- int $tgp }}
{{- end }}
{{- end }}

{{/* Probes of a tasklease process on its named port "http". */}}
{{- define "tasklease.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  initialDelaySeconds: 5
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: 3
{{- end }}
