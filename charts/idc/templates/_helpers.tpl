{{/* Names, labels, the credentials choice and the Kueue queue shared by the idc chart's templates. */}}

{{/* The chart name, as in labels. */}}
{{- define "idc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Name of the Role and RoleBinding: the release name, plus the chart name unless the release name
already holds it (`helm install idc charts/idc` gives "idc"). 63 characters at most, like a label.
*/}}
{{- define "idc.fullname" -}}
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

{{/* helm.sh/chart: name-version, with "+" (not allowed in a label) replaced. */}}
{{- define "idc.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "idc.labels" -}}
helm.sh/chart: {{ include "idc.chart" . }}
app.kubernetes.io/name: {{ include "idc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: idc
{{- end }}

{{/* The service account of worker pods and of idcctl in the cluster. */}}
{{- define "idc.serviceAccountName" -}}
{{- required "serviceAccount.name must not be empty" .Values.serviceAccount.name }}
{{- end }}

{{/* The worker image: repository and tag, the tag defaulting to the chart's appVersion. */}}
{{- define "idc.workerImage" -}}
{{- printf "%s:%s" .Values.worker.image.repository (default .Chart.AppVersion .Values.worker.image.tag) }}
{{- end }}

{{/* The idcctl image of in-cluster sweep drivers, tagged like the worker's. */}}
{{- define "idc.controllerImage" -}}
{{- printf "%s:%s" .Values.controller.image.repository (default .Chart.AppVersion .Values.controller.image.tag) }}
{{- end }}

{{/*
The S3 credentials Secret's name, after checking that the values say one consistent thing (see
values.yaml, s3). Every template that needs the name includes this, so a contradiction fails the
install whatever is rendered.
*/}}
{{- define "idc.s3SecretName" -}}
{{- $s3 := .Values.s3 }}
{{- $keys := or $s3.accessKeyId $s3.secretAccessKey }}
{{- if $s3.existingSecret }}
{{- if or $s3.createSecret $keys }}
{{- fail "s3: existingSecret names a Secret you made, so the chart creates none: drop s3.createSecret, s3.accessKeyId and s3.secretAccessKey, or drop s3.existingSecret to have the chart create the Secret" }}
{{- end }}
{{- $s3.existingSecret }}
{{- else if $s3.createSecret }}
{{- if not (and $s3.accessKeyId $s3.secretAccessKey) }}
{{- fail (printf "s3.createSecret is true but s3.accessKeyId or s3.secretAccessKey is empty: give both (--set s3.accessKeyId=...,s3.secretAccessKey=...), or set s3.createSecret=false and create the Secret %q yourself (kubectl create secret generic %s --from-literal=AWS_ACCESS_KEY_ID=... --from-literal=AWS_SECRET_ACCESS_KEY=...)" $s3.secretName $s3.secretName) }}
{{- end }}
{{- required "s3.secretName must not be empty" $s3.secretName }}
{{- else }}
{{- if $keys }}
{{- fail "s3.accessKeyId / s3.secretAccessKey are given but s3.createSecret is false: add --set s3.createSecret=true to have the chart create the Secret, or leave the keys out and create it yourself" }}
{{- end }}
{{- required "s3.secretName must not be empty" $s3.secretName }}
{{- end }}
{{- end }}

{{/*
The default Kueue LocalQueue of runs, after checking that idcctl may read the Workloads of the
Jobs it queues (without that, status could not say why a queued run waits).
*/}}
{{- define "idc.kueueQueue" -}}
{{- if and .Values.kueue.queue (not .Values.kueue.enabled) }}
{{- fail (printf "kueue.queue is set (%s) but kueue.enabled is false: add --set kueue.enabled=true (the Role then lets idcctl read the queued Jobs' Workloads), or leave kueue.queue empty" .Values.kueue.queue) }}
{{- end }}
{{- .Values.kueue.queue }}
{{- end }}
