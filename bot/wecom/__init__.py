"""WeCom (企业微信) integration: callback crypto, callback view, API client, simulator."""
