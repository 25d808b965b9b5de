"""OpenVINO: IR conversion (build), compiled-model runner, and the NNCF INT8 peer."""
