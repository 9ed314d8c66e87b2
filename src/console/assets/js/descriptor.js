// The sealed descriptor of a generated VirtualSystem with one disk
// (docs/format/package.md §2.1, §4), as `vmseal seal` writes it for a raw
// or qcow2 image: the same text, so that both tools make the same package.
const RAW_URI = 'https://vmseal.dev/ns/disk-format/raw';
const QCOW2_URI = 'http://www.gnome.org/~markmc/qcow-image-format.html';

// XML attribute and text escaping.
export function xml(s) {
  return String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

export function descriptorText(p) {
  const name = 'vm';
  const wrapMethod = p.rsa
    ? `      <xenc:EncryptionMethod Algorithm="${p.keyWrap}">
        <xenc:OAEPparams>${p.label}</xenc:OAEPparams>
        <ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/>
        <xenc11:MGF Algorithm="http://www.w3.org/2009/xmlenc11#mgf1sha256"/>
      </xenc:EncryptionMethod>\n`
    : `      <xenc:EncryptionMethod Algorithm="${p.keyWrap}"/>\n`;
  return `<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/2" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/2" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xenc="http://www.w3.org/2001/04/xmlenc#" xmlns:ds="http://www.w3.org/2000/09/xmldsig#" xmlns:vmseal="https://vmseal.dev/ns/package/v1"${p.rsa ? ' xmlns:xenc11="http://www.w3.org/2009/xmlenc11#"' : ''}>
  <References>
    <File ovf:id="file1" ovf:href="${xml(p.href)}" ovf:size="${p.sealedSize}">
      <xenc:EncryptedData Id="vmseal-data-file1">
        <xenc:EncryptionMethod Algorithm="urn:vmseal:stream:v1"/>
        <ds:KeyInfo>
          <ds:RetrievalMethod URI="#vmseal-key" Type="http://www.w3.org/2001/04/xmlenc#EncryptedKey"/>
        </ds:KeyInfo>
        <xenc:CipherData>
          <xenc:CipherReference URI="${xml(p.href)}"/>
        </xenc:CipherData>
      </xenc:EncryptedData>
    </File>
  </References>
  <ovf:EncryptionSection>
    <ovf:Info>Files sealed by vmseal; the data key is wrapped to the customer key</ovf:Info>
    <xenc:EncryptedKey Id="vmseal-key">
${wrapMethod}      <ds:KeyInfo>
        <ds:KeyName>${xml(p.keyId)}</ds:KeyName>
      </ds:KeyInfo>
      <xenc:CipherData>
        <xenc:CipherValue>${p.wrapped}</xenc:CipherValue>
      </xenc:CipherData>
      <xenc:EncryptionProperties>
        <xenc:EncryptionProperty Id="vmseal-tag" Target="#vmseal-key">
          <vmseal:Tag format="vmseal-package" version="1" keyWrapAlgorithm="${p.keyWrap}" dataAlgorithm="urn:vmseal:stream:v1" chunkSize="${p.chunkBytes}" keyId="${xml(p.keyId)}" imageId="${xml(p.imageId)}" tenant="${xml(p.tenant)}" keyVersion="1" created="${p.created}"/>
        </xenc:EncryptionProperty>
      </xenc:EncryptionProperties>
      <xenc:ReferenceList>
        <xenc:DataReference URI="#vmseal-data-file1"/>
      </xenc:ReferenceList>
    </xenc:EncryptedKey>
  </ovf:EncryptionSection>
  <DiskSection>
    <Info>Virtual disks</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="${p.capacity}" ovf:format="${p.qcow2 ? QCOW2_URI : RAW_URI}"/>
  </DiskSection>
  <NetworkSection>
    <Info>Logical networks</Info>
    <Network ovf:name="default">
      <Description>Default network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="${name}">
    <Info>A virtual machine sealed by vmseal</Info>
    <Name>${name}</Name>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>${name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmseal-1</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:ElementName>${p.cpus} virtual CPUs</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>${p.cpus}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory size</rasd:Description>
        <rasd:ElementName>${p.memoryMib} MiB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>${p.memoryMib}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>Disk controller</rasd:Description>
        <rasd:ElementName>virtio-scsi controller</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>virtio-scsi</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>disk1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>default</rasd:Connection>
        <rasd:ElementName>Ethernet adapter on default</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>virtio-net</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
`;
}
