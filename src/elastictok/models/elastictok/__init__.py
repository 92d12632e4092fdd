"""The ElasticTok family (Yan et al., ICLR 2025): config, model, and converter for the original release."""
