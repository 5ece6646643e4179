package integration

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

var deleteOpts = metav1.DeleteOptions{}
