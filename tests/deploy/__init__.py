"""Static checks of the Dockerfile, compose file and Kubernetes manifests against the code."""
