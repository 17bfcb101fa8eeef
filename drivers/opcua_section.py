"""The config section of the OPC UA protocol: what an opcua device and its tags may say.

Protocol fields only (pydantic, gateway.model.STRICT), joined by gateway.config with the fields every device and
tag has (drivers.registry.Protocol.device_fields / tag_fields). Imports no asyncua: `check` stays light.

Sources: OPC UA Part 6 5.3.1.10 (NodeId string forms, drivers.opcua_node_ids), Part 4 5.13 (subscriptions:
publishing interval, data-change deadband), Part 2 / Part 7 (security policies and modes, user tokens).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from drivers.opcua_node_ids import parse_node_id
from gateway.model import STRICT, Explained, SecretPath


class OpcUaTagFields(BaseModel):
    """The OPC UA fields of a tag: its node and how it is sampled."""

    model_config = STRICT

    node_id: str = Field(description="ns=2;s=..., nsu=URI;s=..., i=/s=/g=/b= forms")
    subscribe: bool = Field(True, description="monitored item (subscription) rather than polled reads")
    deadband: float = Field(0.0, ge=0, description="absolute data-change deadband of the subscription")

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, v: str) -> str:
        parse_node_id(v)  # ValueError: whitespace, unknown form (OPC UA Part 6 5.3.1.10)
        return v


class OpcUaSecurity(BaseModel):
    """OPC UA Part 2 / Part 7 security: policy + mode with a client certificate, and/or a user token."""

    model_config = STRICT

    policy: Literal["Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"] | None = None
    mode: Literal["Sign", "SignAndEncrypt"] | None = None
    cert: str | None = Field(None, description="client certificate (DER or PEM) file")
    key: SecretPath | None = Field(None, description="client private key file (mode 0600)")
    server_cert: str | None = Field(None, description="trusted server certificate file")
    username: str | None = None
    password_file: SecretPath | None = Field(None, description="file holding the password (mode 0600; never inline)")

    @model_validator(mode="after")
    def _pairs(self) -> "OpcUaSecurity":
        if (self.policy is None) != (self.mode is None):
            raise ValueError(Explained("policy and mode go together"))
        if self.policy and not (self.cert and self.key):
            raise ValueError(Explained("a security policy needs cert and key files"))
        if (self.username is None) != (self.password_file is None):
            raise ValueError(Explained("username and password_file go together"))
        return self


class OpcUaFields(BaseModel):
    """The fields of an opcua device (one client session to one server endpoint)."""

    model_config = STRICT

    endpoint: str = Field(pattern=r"^opc\.tcp://")
    publishing_interval_ms: int = Field(250, ge=10)
    watchdog_s: float = Field(5.0, gt=0, description="read ServerStatus/CurrentTime this often (C12)")
    security: OpcUaSecurity | None = None
