{{- define "esi.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "esi.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "esi.labels" -}}
app.kubernetes.io/name: {{ include "esi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "esi.selector" -}}
app.kubernetes.io/name: {{ include "esi.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "esi.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "esi.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "esi.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/*
Environment of one component (the reconciler or the worker): etcd, its own
etcd identity, the catalog. Called with (dict "root" $ "c" .Values.<component>).
Each component may have its own etcd user (c.etcd.credentialsSecret, else
etcd.credentialsSecret) and its own client certificate (c.etcd.clientCertSecret,
tls.crt and tls.key: with etcd --client-cert-auth its CN is the etcd user).
*/}}
{{- define "esi.env" -}}
{{- $v := .root.Values -}}
{{- $etcd := .c.etcd | default dict -}}
{{- $creds := $etcd.credentialsSecret | default $v.etcd.credentialsSecret -}}
- name: ESI_ETCD_ENDPOINTS
  value: {{ $v.etcd.endpoints | quote }}
- name: ESI_LOG_FORMAT
  value: {{ $v.logFormat | quote }}
- name: ESI_LOG_LEVEL
  value: {{ $v.logLevel | quote }}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
{{- if $v.etcd.discover }}
- name: ESI_ETCD_DISCOVER
  value: "true"
{{- end }}
{{- if $v.etcd.tlsSecret }}
- name: ESI_ETCD_CA
  value: /etc/esi/etcd-tls/ca.crt
{{- end }}
{{- if $etcd.clientCertSecret }}
- name: ESI_ETCD_CERT
  value: /etc/esi/etcd-client/tls.crt
- name: ESI_ETCD_KEY
  value: /etc/esi/etcd-client/tls.key
{{- end }}
{{- if $creds }}
- name: ESI_ETCD_USER
  valueFrom: {secretKeyRef: {name: {{ $creds }}, key: username}}
- name: ESI_ETCD_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ $creds }}, key: password}}
{{- end }}
{{- range $k, $val := $v.limits }}
{{- if $val }}
- name: ESI_MAX_{{ $k | snakecase | upper }}
  value: {{ $val | int64 | quote }}
{{- end }}
{{- end }}
{{- if $v.catalog.configMap }}
- name: ESI_SCHEMAS
  value: /etc/esi/catalog/schemas.json
{{- if $v.catalog.templateMappings }}
- name: ESI_TEMPLATE_MAPPINGS
  value: /etc/esi/catalog/template_mappings.json
{{- end }}
{{- end }}
{{- with .c.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "esi.volumeMounts" -}}
{{- $etcd := .c.etcd | default dict -}}
{{- if .root.Values.etcd.tlsSecret }}
- name: etcd-tls
  mountPath: /etc/esi/etcd-tls
  readOnly: true
{{- end }}
{{- if $etcd.clientCertSecret }}
- name: etcd-client
  mountPath: /etc/esi/etcd-client
  readOnly: true
{{- end }}
{{- if .root.Values.catalog.configMap }}
- name: catalog
  mountPath: /etc/esi/catalog
  readOnly: true
{{- end }}
{{- end -}}

{{- define "esi.volumes" -}}
{{- $etcd := .c.etcd | default dict -}}
{{- if .root.Values.etcd.tlsSecret }}
- name: etcd-tls
  secret: {secretName: {{ .root.Values.etcd.tlsSecret }}, items: [{key: ca.crt, path: ca.crt}]}
{{- end }}
{{- if $etcd.clientCertSecret }}
- name: etcd-client
  secret: {secretName: {{ $etcd.clientCertSecret }}, defaultMode: 0440}
{{- end }}
{{- if .root.Values.catalog.configMap }}
- name: catalog
  configMap: {name: {{ .root.Values.catalog.configMap }}}
{{- end }}
{{- end -}}
